//! The table of configuration contexts, shared by every thread of the calling process.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, MutexGuard, PoisonError};

use super::CapiError;
use crate::resources::VmResources;

#[derive(Debug, Default)]
struct Table {
    next_id: u32,
    contexts: HashMap<u32, VmResources>,
}

static TABLE: LazyLock<Mutex<Table>> = LazyLock::new(Mutex::default);

fn table() -> MutexGuard<'static, Table> {
    // A panic while holding the lock is caught at the C boundary; the table itself holds only
    // plain data, so it is still consistent and usable.
    TABLE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Context IDs are returned as positive `int32_t`.
const MAX_ID: u32 = i32::MAX as u32;

/// Creates a context with default settings and returns its ID.
pub(crate) fn create() -> Result<u32, CapiError> {
    let mut t = table();
    if t.contexts.len() > usize::try_from(MAX_ID).unwrap_or(usize::MAX) {
        return Err(CapiError::TooManyContexts);
    }
    // IDs are reused only after wrapping around the whole positive i32 range.
    let mut id = t.next_id;
    while t.contexts.contains_key(&id) {
        id = if id >= MAX_ID { 0 } else { id + 1 };
    }
    t.next_id = if id >= MAX_ID { 0 } else { id + 1 };
    t.contexts.insert(id, VmResources::default());
    Ok(id)
}

/// Frees a context.
pub(crate) fn free(id: u32) -> Result<(), CapiError> {
    table()
        .contexts
        .remove(&id)
        .map(drop)
        .ok_or(CapiError::UnknownContext(id))
}

/// Runs `f` on a context's settings. `f` sees a copy and the context is only updated when
/// `f` succeeds, so a rejected call leaves the context as it was.
pub(crate) fn update<R>(
    id: u32,
    f: impl FnOnce(&mut VmResources) -> Result<R, CapiError>,
) -> Result<R, CapiError> {
    let mut t = table();
    let current = t
        .contexts
        .get_mut(&id)
        .ok_or(CapiError::UnknownContext(id))?;
    let mut copy = current.clone();
    let r = f(&mut copy)?;
    *current = copy;
    Ok(r)
}

/// Returns a copy of a context's settings.
pub(crate) fn get(id: u32) -> Result<VmResources, CapiError> {
    table()
        .contexts
        .get(&id)
        .cloned()
        .ok_or(CapiError::UnknownContext(id))
}

/// Removes a context for a launch.
pub(crate) fn take(id: u32) -> Result<VmResources, CapiError> {
    table()
        .contexts
        .remove(&id)
        .ok_or(CapiError::UnknownContext(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_update_free() {
        let id = create().unwrap();
        update(id, |r| {
            r.workdir = Some("/w".into());
            Ok(())
        })
        .unwrap();
        assert_eq!(get(id).unwrap().workdir.as_deref(), Some("/w"));
        let failed: Result<(), _> = update(id, |r| {
            r.workdir = Some("/changed".into());
            Err(CapiError::NullPointer("x"))
        });
        assert!(failed.is_err());
        assert_eq!(get(id).unwrap().workdir.as_deref(), Some("/w"));
        free(id).unwrap();
        assert!(matches!(free(id), Err(CapiError::UnknownContext(_))));
        assert!(matches!(get(id), Err(CapiError::UnknownContext(_))));
    }

    #[test]
    fn ids_are_distinct_across_threads() {
        let handles: Vec<_> = (0..8)
            .map(|_| std::thread::spawn(|| (0..50).map(|_| create().unwrap()).collect::<Vec<_>>()))
            .collect();
        let mut ids: Vec<u32> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let n = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), n);
        for id in ids {
            free(id).unwrap();
        }
    }
}
