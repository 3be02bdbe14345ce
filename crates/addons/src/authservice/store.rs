//! Where sessions and sign-ins under way are kept: in this process's
//! memory, or in Redis (kept across restarts, shared by replicas). Keys
//! are hashes of the browser's secrets (session id, login state), so
//! neither a Redis dump nor a memory dump holds a usable cookie.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::redis_client::{Redis, RedisError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Redis(#[from] RedisError),
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

/// The store of one server: its choice, memory or Redis.
pub enum Store<'s> {
    Memory(&'s Memory),
    Redis(Option<&'s Redis>),
}

impl Store<'_> {
    /// One command to this store's Redis.
    async fn run<T: redis::FromRedisValue>(&self, command: redis::Cmd) -> Result<T, StoreError> {
        let Store::Redis(Some(redis)) = self else {
            return Err(StoreError::NoRedis);
        };
        Ok(redis
            .run(async |mut connection| command.query_async(&mut connection).await)
            .await?)
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
                self.run::<()>(command).await
            }
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Store::Memory(memory) => Ok(memory.get(key)),
            Store::Redis(_) => {
                let mut command = redis::cmd("GET");
                command.arg(key);
                self.run(command).await
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
                self.run(command).await
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
                self.run(command).await
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
                self.run::<()>(command).await
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
