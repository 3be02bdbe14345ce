//! Where sessions and sign-ins under way are kept: in this process's
//! memory, or in Redis (kept across restarts, shared by replicas). Keys
//! are hashes of the browser's secrets (session id, login state), so
//! neither a Redis dump nor a memory dump holds a usable cookie.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error(
        "this server keeps sessions in Redis, and weft authservice was started without --redis"
    )]
    NoRedis,
}

/// What a key holds.
#[derive(Clone, Copy)]
pub enum Kind {
    Session,
    Login,
}

/// The key for `secret` (a session id or a login state).
pub fn key(kind: Kind, secret: &str) -> String {
    let prefix = match kind {
        Kind::Session => "weft:session:",
        Kind::Login => "weft:login:",
    };
    format!("{prefix}{}", hex::encode(Sha256::digest(secret.as_bytes())))
}

/// Values that expire.
#[derive(Default)]
pub struct Memory {
    entries: Mutex<HashMap<String, (Vec<u8>, Instant)>>,
}

impl Memory {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Vec<u8>, Instant)>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn put(&self, key: String, value: Vec<u8>, ttl: Duration) {
        let mut entries = self.lock();
        let now = Instant::now();
        // Expired entries go as new ones come, so memory follows the
        // sessions alive.
        if entries.len().is_multiple_of(64) {
            entries.retain(|_, (_, until)| *until > now);
        }
        entries.insert(key, (value, now + ttl));
    }

    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let entries = self.lock();
        let (value, until) = entries.get(key)?;
        (*until > Instant::now()).then(|| value.clone())
    }

    fn touch(&self, key: &str, ttl: Duration) -> Option<Vec<u8>> {
        let mut entries = self.lock();
        let (value, until) = entries.get_mut(key)?;
        let now = Instant::now();
        if *until <= now {
            return None;
        }
        *until = now + ttl;
        Some(value.clone())
    }

    fn take(&self, key: &str) -> Option<Vec<u8>> {
        let (value, until) = self.lock().remove(key)?;
        (until > Instant::now()).then_some(value)
    }

    fn delete(&self, key: &str) {
        self.lock().remove(key);
    }
}

#[derive(Clone)]
pub struct Redis {
    connection: ConnectionManager,
    timeout: Duration,
}

impl Redis {
    /// A store on the Redis at `url`, connected on first use (and again
    /// after a failure).
    pub fn new(url: &str, timeout: Duration) -> Result<Redis, StoreError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_max_delay(Duration::from_secs(1));
        Ok(Redis {
            connection: ConnectionManager::new_lazy_with_config(client, config)?,
            timeout,
        })
    }

    async fn run<T: redis::FromRedisValue>(&self, command: redis::Cmd) -> Result<T, StoreError> {
        let mut connection = self.connection.clone();
        tokio::time::timeout(self.timeout, command.query_async(&mut connection))
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))?
            .map_err(StoreError::from)
    }
}

/// The store of one server: its choice, memory or Redis.
pub enum Store<'s> {
    Memory(&'s Memory),
    Redis(Option<&'s Redis>),
}

impl Store<'_> {
    fn redis(&self) -> Result<&Redis, StoreError> {
        match self {
            Store::Redis(Some(redis)) => Ok(redis),
            _ => Err(StoreError::NoRedis),
        }
    }

    pub async fn put(&self, key: String, value: Vec<u8>, ttl: Duration) -> Result<(), StoreError> {
        let ttl = ttl.max(Duration::from_secs(1));
        match self {
            Store::Memory(memory) => {
                memory.put(key, value, ttl);
                Ok(())
            }
            Store::Redis(_) => {
                let mut command = redis::cmd("SET");
                command.arg(key).arg(value).arg("EX").arg(ttl.as_secs());
                self.redis()?.run::<()>(command).await
            }
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Store::Memory(memory) => Ok(memory.get(key)),
            Store::Redis(_) => {
                let mut command = redis::cmd("GET");
                command.arg(key);
                self.redis()?.run(command).await
            }
        }
    }

    /// Gets and keeps `ttl` longer, in one round trip (a session's use
    /// renews its idle timeout).
    pub async fn touch(&self, key: &str, ttl: Duration) -> Result<Option<Vec<u8>>, StoreError> {
        let ttl = ttl.max(Duration::from_secs(1));
        match self {
            Store::Memory(memory) => Ok(memory.touch(key, ttl)),
            Store::Redis(_) => {
                let mut command = redis::cmd("GETEX");
                command.arg(key).arg("EX").arg(ttl.as_secs());
                self.redis()?.run(command).await
            }
        }
    }

    /// Gets and deletes at once: what is taken once cannot be taken again
    /// (a login state, against a replayed callback).
    pub async fn take(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Store::Memory(memory) => Ok(memory.take(key)),
            Store::Redis(_) => {
                let mut command = redis::cmd("GETDEL");
                command.arg(key);
                self.redis()?.run(command).await
            }
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self {
            Store::Memory(memory) => {
                memory.delete(key);
                Ok(())
            }
            Store::Redis(_) => {
                let mut command = redis::cmd("DEL");
                command.arg(key);
                self.redis()?.run::<()>(command).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_entries_expire_and_a_taken_one_is_gone() {
        let memory = Memory::default();
        let store = Store::Memory(&memory);
        let k = key(Kind::Login, "state");
        assert_ne!(k, key(Kind::Session, "state"));
        assert!(!k.contains("state"), "keys hold no secret");
        store
            .put(k.clone(), b"v".to_vec(), Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(store.get(&k).await.unwrap().as_deref(), Some(&b"v"[..]));
        assert_eq!(
            store
                .touch(&k, Duration::from_secs(60))
                .await
                .unwrap()
                .as_deref(),
            Some(&b"v"[..])
        );
        assert_eq!(store.take(&k).await.unwrap().as_deref(), Some(&b"v"[..]));
        assert_eq!(store.take(&k).await.unwrap(), None);
        memory.put("old".into(), b"v".to_vec(), Duration::ZERO);
        assert_eq!(memory.get("old"), None);
        let err = Store::Redis(None).get("x").await.unwrap_err();
        assert!(err.to_string().contains("--redis"));
    }
}
