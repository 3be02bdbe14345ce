//! Counting in Redis: every counter a decision touches goes in one
//! pipelined round trip (`INCRBY`, then `EXPIRE … NX` so a counter lives
//! as long as its window and no longer).

use std::time::{Duration, Instant};

use crate::redis_client::{Redis, RedisError};

/// One counter to add to: its key, the hits, its window in seconds.
pub struct Hit<'k> {
    pub key: &'k str,
    pub hits: u32,
    pub window_seconds: u32,
}

#[derive(Clone)]
pub struct Counter {
    redis: Redis,
}

impl Counter {
    /// A counter on the Redis at `url` (`redis://host:port/db`); no
    /// connection is made until the first count.
    pub fn new(url: &str, timeout: Duration) -> Result<Counter, RedisError> {
        Ok(Counter {
            redis: Redis::new(url, timeout)?,
        })
    }

    /// Adds `hits` and returns each counter's value after it, and how
    /// long Redis took.
    pub async fn add(&self, hits: &[Hit<'_>]) -> Result<(Vec<u64>, Duration), RedisError> {
        let mut pipe = redis::pipe();
        for hit in hits {
            pipe.cmd("INCRBY").arg(hit.key).arg(hit.hits);
            pipe.cmd("EXPIRE")
                .arg(hit.key)
                .arg(hit.window_seconds)
                .arg("NX")
                .ignore();
        }
        let started = Instant::now();
        let counts: Vec<u64> = self
            .redis
            .run(async |mut connection| pipe.query_async(&mut connection).await)
            .await?;
        Ok((counts, started.elapsed()))
    }
}
