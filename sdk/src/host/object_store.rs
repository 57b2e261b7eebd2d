//! `object-store`: objects in the stores the operator configured and granted to the
//! installation (needs the `object_store` grant). `store` names one of them (`[object_stores.NAME]`
//! in `sluice.toml`); credentials stay in the host.
//!
//! Keys are relative paths (no `..`, no leading `/`); when the grant sets a prefix, the host adds
//! it to every key and removes it from listed keys. Natively, an in-memory store per test thread
//! with the host's key rules and size cap, which [`crate::testing::Harness::objects`] reads.

use super::HostError;

/// What the store knows of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The key, without the grant's prefix.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last change, in epoch milliseconds.
    pub last_modified_ms: i64,
    /// The store's entity tag, when it has one.
    pub e_tag: Option<String>,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectPage {
    /// Objects in key order.
    pub objects: Vec<ObjectInfo>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next: Option<String>,
}

/// Stores `body` under `key` in `store`, replacing any object there.
pub fn put(store: &str, key: &str, body: &[u8]) -> Result<(), HostError> {
    imp::put(store, key, body)
}

/// The object under `key` in `store`, if any.
pub fn get(store: &str, key: &str) -> Result<Option<Vec<u8>>, HostError> {
    imp::get(store, key)
}

/// What `store` knows of the object under `key`, if any.
pub fn head(store: &str, key: &str) -> Result<Option<ObjectInfo>, HostError> {
    imp::head(store, key)
}

/// Objects of `store` whose key starts with `prefix`, after `after`, at most `limit` (≤ 1,000).
pub fn list(
    store: &str,
    prefix: &str,
    after: Option<&str>,
    limit: u32,
) -> Result<ObjectPage, HostError> {
    imp::list(store, prefix, after, limit)
}

/// Removes the object under `key` in `store`; whether it existed.
pub fn delete(store: &str, key: &str) -> Result<bool, HostError> {
    imp::delete(store, key)
}

#[cfg(target_family = "wasm")]
mod imp {
    use super::super::{HostError, from_wit};
    use super::{ObjectInfo, ObjectPage};
    use crate::bindings::sluice::plugin::object_store as wit;

    fn info(object: wit::ObjectInfo) -> ObjectInfo {
        ObjectInfo {
            key: object.key,
            size: object.size,
            last_modified_ms: object.last_modified,
            e_tag: object.e_tag,
        }
    }

    pub fn put(store: &str, key: &str, body: &[u8]) -> Result<(), HostError> {
        wit::put(store, key, body).map_err(from_wit)
    }

    pub fn get(store: &str, key: &str) -> Result<Option<Vec<u8>>, HostError> {
        wit::get(store, key).map_err(from_wit)
    }

    pub fn head(store: &str, key: &str) -> Result<Option<ObjectInfo>, HostError> {
        wit::head(store, key).map(|o| o.map(info)).map_err(from_wit)
    }

    pub fn list(
        store: &str,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<ObjectPage, HostError> {
        let page = wit::list(store, prefix, after, limit).map_err(from_wit)?;
        Ok(ObjectPage {
            objects: page.objects.into_iter().map(info).collect(),
            next: page.next,
        })
    }

    pub fn delete(store: &str, key: &str) -> Result<bool, HostError> {
        wit::delete(store, key).map_err(from_wit)
    }
}

#[cfg(not(target_family = "wasm"))]
mod imp {
    use super::super::HostError;
    use super::{ObjectInfo, ObjectPage};
    use crate::testing::fakes;
    use sluice_abi::limits::{self, DEFAULT_MAX_OBJECT_BYTES, MAX_LIST_OBJECTS};

    fn info(key: &str, body: &[u8]) -> ObjectInfo {
        ObjectInfo {
            key: key.to_owned(),
            size: body.len() as u64,
            last_modified_ms: 0,
            e_tag: None,
        }
    }

    pub fn put(store: &str, key: &str, body: &[u8]) -> Result<(), HostError> {
        limits::check_object_key(key, false)?;
        limits::check_value(body, DEFAULT_MAX_OBJECT_BYTES)?;
        fakes::using("object_store", |f| {
            if let Some(error) = f
                .put_error
                .as_ref()
                .and_then(|fail| fail(store, key, body.len()))
            {
                return Err(error);
            }
            f.objects
                .insert((store.to_owned(), key.to_owned()), body.to_vec());
            Ok(())
        })
    }

    pub fn get(store: &str, key: &str) -> Result<Option<Vec<u8>>, HostError> {
        limits::check_object_key(key, false)?;
        Ok(fakes::using("object_store", |f| {
            f.objects.get(&(store.to_owned(), key.to_owned())).cloned()
        }))
    }

    pub fn head(store: &str, key: &str) -> Result<Option<ObjectInfo>, HostError> {
        Ok(get(store, key)?.map(|body| info(key, &body)))
    }

    pub fn list(
        store: &str,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<ObjectPage, HostError> {
        limits::check_object_key(prefix, true)?;
        let limit = limit.min(MAX_LIST_OBJECTS) as usize;
        let mut objects: Vec<ObjectInfo> = fakes::using("object_store", |f| {
            f.objects
                .iter()
                .filter(|((s, key), _)| {
                    s == store && key.starts_with(prefix) && after.is_none_or(|a| key.as_str() > a)
                })
                .map(|((_, key), body)| info(key, body))
                .take(limit + 1)
                .collect()
        });
        let next = (objects.len() > limit).then(|| {
            objects.truncate(limit);
            objects.last().map(|o| o.key.clone()).unwrap_or_default()
        });
        Ok(ObjectPage { objects, next })
    }

    pub fn delete(store: &str, key: &str) -> Result<bool, HostError> {
        limits::check_object_key(key, false)?;
        Ok(fakes::using("object_store", |f| {
            f.objects
                .remove(&(store.to_owned(), key.to_owned()))
                .is_some()
        }))
    }
}
