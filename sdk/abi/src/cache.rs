//! One in-memory cache namespace with Redis semantics (strings, counters, lists, expiry): the
//! host's embedded `cache` backend and the SDK harness's fake are this same code.

use crate::limits::{
    self, ErrorKind, HostError, MAX_CACHE_LIST_LEN, MAX_CACHE_NAMESPACE_BYTES,
    MAX_CACHE_VALUE_BYTES,
};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
enum Value {
    Bytes(Vec<u8>),
    List(VecDeque<Vec<u8>>),
}

#[derive(Debug, Clone)]
struct Entry {
    value: Value,
    expires: Option<Instant>,
}

impl Entry {
    fn size(&self, key: &str) -> usize {
        key.len()
            + match &self.value {
                Value::Bytes(bytes) => bytes.len(),
                Value::List(items) => items.iter().map(Vec::len).sum(),
            }
    }
}

/// One namespace: keys to values or lists, each optionally expiring, within
/// [`MAX_CACHE_NAMESPACE_BYTES`]. Every operation takes the current time, so expiry is exact and
/// testable.
#[derive(Debug, Default)]
pub struct Namespace {
    entries: HashMap<String, Entry>,
    bytes: usize,
}

fn wrong_type() -> HostError {
    HostError::new(
        ErrorKind::Invalid,
        "the key holds a value of the other type (value vs list)",
    )
}

impl Namespace {
    /// Bytes of keys and values held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// `GET`.
    pub fn get(&mut self, key: &str, now: Instant) -> Result<Option<Vec<u8>>, HostError> {
        limits::check_key(key)?;
        match self.live(key, now).map(|e| &e.value) {
            None => Ok(None),
            Some(Value::Bytes(bytes)) => Ok(Some(bytes.clone())),
            Some(Value::List(_)) => Err(wrong_type()),
        }
    }

    /// `SET key value [EX ttl]`.
    pub fn set(
        &mut self,
        key: &str,
        value: Vec<u8>,
        ttl_seconds: Option<u32>,
        now: Instant,
    ) -> Result<(), HostError> {
        limits::check_key(key)?;
        limits::check_value(&value, MAX_CACHE_VALUE_BYTES)?;
        let entry = Entry {
            value: Value::Bytes(value),
            expires: ttl_seconds.map(|ttl| now + Duration::from_secs(u64::from(ttl))),
        };
        self.replace(key, entry, now)
    }

    /// `DEL`; whether the key existed.
    pub fn delete(&mut self, key: &str, now: Instant) -> Result<bool, HostError> {
        limits::check_key(key)?;
        let existed = self.live(key, now).is_some();
        self.remove(key);
        Ok(existed)
    }

    /// `INCRBY`; keeps the key's expiry.
    pub fn increment(&mut self, key: &str, by: i64, now: Instant) -> Result<i64, HostError> {
        limits::check_key(key)?;
        let (current, expires) = match self.live(key, now) {
            None => (None, None),
            Some(Entry {
                value: Value::Bytes(bytes),
                expires,
            }) => (Some(bytes.clone()), *expires),
            Some(_) => return Err(wrong_type()),
        };
        let value = limits::add_to_integer(current.as_deref(), by)?;
        let entry = Entry {
            value: Value::Bytes(value.to_string().into_bytes()),
            expires,
        };
        self.replace(key, entry, now)?;
        Ok(value)
    }

    /// `EXPIRE`; a TTL of 0 removes the key. Whether the key exists.
    pub fn expire(&mut self, key: &str, ttl_seconds: u32, now: Instant) -> Result<bool, HostError> {
        limits::check_key(key)?;
        if self.live(key, now).is_none() {
            return Ok(false);
        }
        if ttl_seconds == 0 {
            self.remove(key);
        } else if let Some(entry) = self.entries.get_mut(key) {
            entry.expires = Some(now + Duration::from_secs(u64::from(ttl_seconds)));
        }
        Ok(true)
    }

    /// `LPUSH key v1 v2 ...` (so `v2` ends up first); the list's new length.
    pub fn list_push(
        &mut self,
        key: &str,
        values: Vec<Vec<u8>>,
        now: Instant,
    ) -> Result<u32, HostError> {
        limits::check_key(key)?;
        limits::check_push(&values)?;
        let len = match self.live(key, now).map(|e| &e.value) {
            None => 0,
            Some(Value::List(items)) => items.len(),
            Some(Value::Bytes(_)) => return Err(wrong_type()),
        };
        if len + values.len() > MAX_CACHE_LIST_LEN {
            return Err(HostError::new(
                ErrorKind::TooLarge,
                format!("the list would exceed {MAX_CACHE_LIST_LEN} elements"),
            ));
        }
        let added = key.len() * usize::from(len == 0) + values.iter().map(Vec::len).sum::<usize>();
        self.reserve(added, now)?;
        let entry = self.entries.entry(key.to_owned()).or_insert(Entry {
            value: Value::List(VecDeque::new()),
            expires: None,
        });
        let Value::List(items) = &mut entry.value else {
            return Err(wrong_type());
        };
        for value in values {
            items.push_front(value);
        }
        self.bytes += added;
        Ok(items.len() as u32)
    }

    /// `LRANGE key start stop`, inclusive, negative indexes counting from the end.
    pub fn list_range(
        &mut self,
        key: &str,
        start: i64,
        stop: i64,
        now: Instant,
    ) -> Result<Vec<Vec<u8>>, HostError> {
        let items = match self.list(key, now)? {
            Some(items) => items,
            None => return Ok(Vec::new()),
        };
        let len = items.len() as i64;
        let index = |i: i64| if i < 0 { (len + i).max(0) } else { i };
        let (start, stop) = (index(start), index(stop).min(len - 1));
        if start > stop {
            return Ok(Vec::new());
        }
        Ok(items
            .range(start as usize..=stop as usize)
            .cloned()
            .collect())
    }

    /// `LLEN`.
    pub fn list_length(&mut self, key: &str, now: Instant) -> Result<u32, HostError> {
        Ok(self.list(key, now)?.map_or(0, |items| items.len() as u32))
    }

    /// `LREM key count value`; how many were removed.
    pub fn list_remove(
        &mut self,
        key: &str,
        count: i64,
        value: &[u8],
        now: Instant,
    ) -> Result<u32, HostError> {
        let Some(items) = self.list_mut(key, now)? else {
            return Ok(0);
        };
        let limit = if count == 0 {
            usize::MAX
        } else {
            count.unsigned_abs() as usize
        };
        let mut positions: Vec<usize> = items
            .iter()
            .enumerate()
            .filter(|(_, item)| item.as_slice() == value)
            .map(|(i, _)| i)
            .collect();
        if count < 0 {
            positions.reverse();
        }
        positions.truncate(limit);
        positions.sort_unstable_by(|a, b| b.cmp(a));
        for &i in &positions {
            items.remove(i);
        }
        self.bytes -= positions.len() * value.len();
        self.drop_if_empty(key);
        Ok(positions.len() as u32)
    }

    /// `LPOP key count`.
    pub fn list_pop(
        &mut self,
        key: &str,
        count: u32,
        now: Instant,
    ) -> Result<Vec<Vec<u8>>, HostError> {
        let Some(items) = self.list_mut(key, now)? else {
            return Ok(Vec::new());
        };
        let take = (count as usize).min(items.len());
        let popped: Vec<Vec<u8>> = items.drain(..take).collect();
        self.bytes -= popped.iter().map(Vec::len).sum::<usize>();
        self.drop_if_empty(key);
        Ok(popped)
    }

    /// The entry under `key` unless it expired (an expired one is removed).
    fn live(&mut self, key: &str, now: Instant) -> Option<&Entry> {
        if self
            .entries
            .get(key)
            .is_some_and(|e| e.expires.is_some_and(|at| at <= now))
        {
            self.remove(key);
        }
        self.entries.get(key)
    }

    fn list(&mut self, key: &str, now: Instant) -> Result<Option<&VecDeque<Vec<u8>>>, HostError> {
        limits::check_key(key)?;
        match self.live(key, now).map(|e| &e.value) {
            None => Ok(None),
            Some(Value::List(items)) => Ok(Some(items)),
            Some(Value::Bytes(_)) => Err(wrong_type()),
        }
    }

    fn list_mut(
        &mut self,
        key: &str,
        now: Instant,
    ) -> Result<Option<&mut VecDeque<Vec<u8>>>, HostError> {
        self.list(key, now)?;
        Ok(match self.entries.get_mut(key).map(|e| &mut e.value) {
            Some(Value::List(items)) => Some(items),
            _ => None,
        })
    }

    fn drop_if_empty(&mut self, key: &str) {
        if matches!(self.entries.get(key).map(|e| &e.value), Some(Value::List(items)) if items.is_empty())
        {
            self.remove(key);
        }
    }

    fn replace(&mut self, key: &str, entry: Entry, now: Instant) -> Result<(), HostError> {
        let old = self.entries.get(key).map_or(0, |e| e.size(key));
        let new = entry.size(key);
        self.reserve(new.saturating_sub(old), now)?;
        self.entries.insert(key.to_owned(), entry);
        self.bytes = self.bytes - old + new;
        Ok(())
    }

    fn remove(&mut self, key: &str) {
        if let Some(entry) = self.entries.remove(key) {
            self.bytes -= entry.size(key);
        }
    }

    /// Makes room for `added` bytes, purging expired entries if needed.
    fn reserve(&mut self, added: usize, now: Instant) -> Result<(), HostError> {
        if self.bytes + added <= MAX_CACHE_NAMESPACE_BYTES {
            return Ok(());
        }
        let expired: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.expires.is_some_and(|at| at <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            self.remove(&key);
        }
        if self.bytes + added <= MAX_CACHE_NAMESPACE_BYTES {
            Ok(())
        } else {
            Err(HostError::new(
                ErrorKind::TooLarge,
                format!("the cache namespace is full ({MAX_CACHE_NAMESPACE_BYTES} bytes)"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::MAX_CACHE_PUSH;

    fn items(values: &[&str]) -> Vec<Vec<u8>> {
        values.iter().map(|v| v.as_bytes().to_vec()).collect()
    }

    #[test]
    fn values_expire_and_counters_keep_their_expiry() {
        let mut cache = Namespace::default();
        let t0 = Instant::now();
        cache.set("a", b"1".to_vec(), Some(10), t0).unwrap();
        assert_eq!(cache.increment("a", 4, t0).unwrap(), 5);
        assert_eq!(
            cache.get("a", t0 + Duration::from_secs(9)).unwrap(),
            Some(b"5".to_vec())
        );
        assert_eq!(cache.get("a", t0 + Duration::from_secs(10)).unwrap(), None);
        assert_eq!(cache.bytes(), 0);
        assert!(!cache.expire("a", 5, t0).unwrap());
        cache.set("b", b"x".to_vec(), None, t0).unwrap();
        assert!(cache.expire("b", 1, t0).unwrap());
        assert!(!cache.delete("b", t0 + Duration::from_secs(1)).unwrap());
        assert_eq!(cache.increment("n", -3, t0).unwrap(), -3);
        cache.set("s", b"text".to_vec(), None, t0).unwrap();
        assert_eq!(
            cache.increment("s", 1, t0).unwrap_err().kind,
            ErrorKind::Invalid
        );
    }

    #[test]
    fn lists_follow_redis() {
        let mut cache = Namespace::default();
        let now = Instant::now();
        assert_eq!(
            cache.list_push("l", items(&["a", "b", "c"]), now).unwrap(),
            3
        );
        assert_eq!(
            cache.list_range("l", 0, -1, now).unwrap(),
            items(&["c", "b", "a"])
        );
        assert_eq!(
            cache.list_range("l", -2, 100, now).unwrap(),
            items(&["b", "a"])
        );
        assert_eq!(cache.list_range("l", 2, 1, now).unwrap(), items(&[]));
        cache.list_push("l", items(&["b", "b"]), now).unwrap();
        assert_eq!(cache.list_remove("l", -1, b"b", now).unwrap(), 1);
        assert_eq!(
            cache.list_range("l", 0, -1, now).unwrap(),
            items(&["b", "b", "c", "a"])
        );
        assert_eq!(cache.list_remove("l", 0, b"b", now).unwrap(), 2);
        assert_eq!(cache.list_pop("l", 5, now).unwrap(), items(&["c", "a"]));
        assert_eq!(cache.list_length("l", now).unwrap(), 0);
        assert_eq!(cache.bytes(), 0);
        cache.set("v", b"x".to_vec(), None, now).unwrap();
        assert_eq!(
            cache.list_push("v", items(&["a"]), now).unwrap_err().kind,
            ErrorKind::Invalid
        );
    }

    #[test]
    fn caps_are_enforced() {
        let mut cache = Namespace::default();
        let now = Instant::now();
        let big = vec![0; MAX_CACHE_VALUE_BYTES + 1];
        assert_eq!(
            cache.set("k", big, None, now).unwrap_err().kind,
            ErrorKind::TooLarge
        );
        let many = vec![b"x".to_vec(); MAX_CACHE_PUSH + 1];
        assert_eq!(
            cache.list_push("l", many, now).unwrap_err().kind,
            ErrorKind::TooLarge
        );
        let value = vec![0; MAX_CACHE_VALUE_BYTES];
        let fits = MAX_CACHE_NAMESPACE_BYTES / (MAX_CACHE_VALUE_BYTES + 8);
        for i in 0..fits {
            cache
                .set(&format!("k{i}"), value.clone(), Some(1), now)
                .unwrap();
        }
        let full = cache.set("one-more", value.clone(), None, now).unwrap_err();
        assert_eq!(full.kind, ErrorKind::TooLarge);
        // Once the others expired, there is room again.
        cache
            .set("one-more", value, None, now + Duration::from_secs(1))
            .unwrap();
        assert_eq!(cache.bytes(), MAX_CACHE_VALUE_BYTES + "one-more".len());
    }
}
