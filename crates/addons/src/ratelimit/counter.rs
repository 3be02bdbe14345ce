//! Counting in Redis: every counter a decision touches goes in one
//! pipelined round trip (`INCRBY`, then `EXPIRE … NX` so a counter lives
//! as long as its window and no longer), bounded by a timeout. The
//! connection is made lazily and made again after a failure, so the
//! service starts while Redis is down and resumes when it is back.

use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// Why a decision could not be counted.
#[derive(Debug, thiserror::Error)]
pub enum CountError {
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// One counter to add to: its key, the hits, its window in seconds.
pub struct Hit<'k> {
    pub key: &'k str,
    pub hits: u32,
    pub window_seconds: u32,
}

#[derive(Clone)]
pub struct Counter {
    connection: ConnectionManager,
    timeout: Duration,
}

impl Counter {
    /// A counter on the Redis at `url` (`redis://host:port/db`); no
    /// connection is made until the first count.
    pub fn new(url: &str, timeout: Duration) -> Result<Counter, CountError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // Reconnect soon after Redis is back: limits resume within a
            // second or so, not after a long backoff.
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let connection = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Counter {
            connection,
            timeout,
        })
    }

    /// Adds `hits` and returns each counter's value after it, and how
    /// long Redis took.
    pub async fn add(&self, hits: &[Hit<'_>]) -> Result<(Vec<u64>, Duration), CountError> {
        let mut pipe = redis::pipe();
        for hit in hits {
            pipe.cmd("INCRBY").arg(hit.key).arg(hit.hits);
            pipe.cmd("EXPIRE")
                .arg(hit.key)
                .arg(hit.window_seconds)
                .arg("NX")
                .ignore();
        }
        let mut connection = self.connection.clone();
        let started = Instant::now();
        let counts: Vec<u64> =
            tokio::time::timeout(self.timeout, pipe.query_async(&mut connection))
                .await
                .map_err(|_| CountError::Timeout(self.timeout))??;
        Ok((counts, started.elapsed()))
    }
}
