//! `storage`: durable key-value of this installation (needs the `storage` grant).
//!
//! Keys are 1 to 256 bytes; values at most 64 KiB; at most 10,000 keys per installation. Every
//! write is durable when the call returns. Natively, an in-memory map per test thread with the
//! same caps.

use super::HostError;

/// The value under `key`, if any.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, HostError> {
    imp::get(key)
}

/// Stores `value` under `key`.
pub fn set(key: &str, value: &[u8]) -> Result<(), HostError> {
    imp::set(key, value)
}

/// Removes `key`; whether it existed.
pub fn delete(key: &str) -> Result<bool, HostError> {
    imp::delete(key)
}

/// Atomically adds `by` to the integer under `key` (absent counts as 0) and returns the result.
pub fn increment(key: &str, by: i64) -> Result<i64, HostError> {
    imp::increment(key, by)
}

/// Keys starting with `prefix` in byte order, after `after` if given, at most `limit` (≤ 1,000).
pub fn list_keys(prefix: &str, after: Option<&str>, limit: u32) -> Result<Vec<String>, HostError> {
    imp::list_keys(prefix, after, limit)
}

#[cfg(target_family = "wasm")]
mod imp {
    use super::super::{HostError, from_wit};
    use crate::bindings::sluice::plugin::storage;

    pub fn get(key: &str) -> Result<Option<Vec<u8>>, HostError> {
        storage::get(key).map_err(from_wit)
    }

    pub fn set(key: &str, value: &[u8]) -> Result<(), HostError> {
        storage::set(key, value).map_err(from_wit)
    }

    pub fn delete(key: &str) -> Result<bool, HostError> {
        storage::delete(key).map_err(from_wit)
    }

    pub fn increment(key: &str, by: i64) -> Result<i64, HostError> {
        storage::increment(key, by).map_err(from_wit)
    }

    pub fn list_keys(
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, HostError> {
        storage::list_keys(prefix, after, limit).map_err(from_wit)
    }
}

#[cfg(not(target_family = "wasm"))]
mod imp {
    use super::HostError;
    use crate::testing::fakes;
    use sluice_abi::limits::{
        self, ErrorKind, MAX_LIST_KEYS, MAX_STORAGE_KEYS, MAX_STORAGE_VALUE_BYTES,
    };

    pub fn get(key: &str) -> Result<Option<Vec<u8>>, HostError> {
        limits::check_key(key)?;
        Ok(fakes::using("storage", |f| f.storage.get(key).cloned()))
    }

    pub fn set(key: &str, value: &[u8]) -> Result<(), HostError> {
        limits::check_key(key)?;
        limits::check_value(value, MAX_STORAGE_VALUE_BYTES)?;
        fakes::using("storage", |f| {
            if !f.storage.contains_key(key) && f.storage.len() >= MAX_STORAGE_KEYS {
                return Err(HostError::new(
                    ErrorKind::TooLarge,
                    format!("the installation already has {MAX_STORAGE_KEYS} keys"),
                ));
            }
            f.storage.insert(key.to_owned(), value.to_vec());
            Ok(())
        })
    }

    pub fn delete(key: &str) -> Result<bool, HostError> {
        limits::check_key(key)?;
        Ok(fakes::using("storage", |f| f.storage.remove(key).is_some()))
    }

    pub fn increment(key: &str, by: i64) -> Result<i64, HostError> {
        let current = get(key)?;
        let value = limits::add_to_integer(current.as_deref(), by)?;
        set(key, value.to_string().as_bytes())?;
        Ok(value)
    }

    pub fn list_keys(
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, HostError> {
        Ok(fakes::using("storage", |f| {
            f.storage
                .keys()
                .filter(|k| k.starts_with(prefix) && after.is_none_or(|a| k.as_str() > a))
                .take(limit.min(MAX_LIST_KEYS) as usize)
                .cloned()
                .collect()
        }))
    }
}
