//! The add-on services' Redis: connected on first use, so a service starts
//! while Redis is down, and again soon after a failure, so it resumes
//! when Redis is back; every round trip bounded by a timeout.

use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

#[derive(Clone)]
pub struct Redis {
    connection: ConnectionManager,
    timeout: Duration,
}

impl Redis {
    /// The Redis at `url` (`redis://host:port/db`); no connection is made
    /// until the first round trip.
    pub fn new(url: &str, timeout: Duration) -> Result<Redis, RedisError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // Reconnect soon after Redis is back: within a second or so,
            // not after a long backoff.
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        Ok(Redis {
            connection: ConnectionManager::new_lazy_with_config(client, config)?,
            timeout,
        })
    }

    /// One round trip: `query` gets a connection (a command's or a
    /// pipeline's `query_async`), and waits at most the timeout.
    pub async fn run<T, F>(
        &self,
        query: impl FnOnce(ConnectionManager) -> F,
    ) -> Result<T, RedisError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        tokio::time::timeout(self.timeout, query(self.connection.clone()))
            .await
            .map_err(|_| RedisError::Timeout(self.timeout))?
            .map_err(RedisError::from)
    }
}
