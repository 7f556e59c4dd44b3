//! Conversions of C strings and NULL-terminated string arrays, with the checks every C
//! entry point needs (NULL, UTF-8, a bound on array length).

use std::ffi::{c_char, CStr};

use super::CapiError;

/// Longest string array accepted; a missing NULL terminator would otherwise read on forever.
pub(crate) const MAX_ARRAY_ENTRIES: usize = 65_536;

/// Borrows a C string argument as UTF-8.
///
/// # Safety
///
/// `ptr` must be NULL or point to a NUL-terminated string that stays valid and unchanged
/// while the returned reference is used.
pub(crate) unsafe fn str_arg<'a>(
    ptr: *const c_char,
    what: &'static str,
) -> Result<&'a str, CapiError> {
    if ptr.is_null() {
        return Err(CapiError::NullPointer(what));
    }
    // SAFETY: non-NULL, and the caller guarantees a valid NUL-terminated string.
    let cstr = unsafe { CStr::from_ptr(ptr) };
    cstr.to_str().map_err(|_| CapiError::NotUtf8(what))
}

/// Copies a NULL-terminated array of C strings; `Ok(None)` when `array` itself is NULL.
///
/// # Safety
///
/// `array` must be NULL or point to an array of pointers ending with a NULL pointer, each
/// pointing to a valid NUL-terminated string.
pub(crate) unsafe fn str_array(
    array: *const *const c_char,
    what: &'static str,
) -> Result<Option<Vec<String>>, CapiError> {
    if array.is_null() {
        return Ok(None);
    }
    let mut out = Vec::new();
    for index in 0..=MAX_ARRAY_ENTRIES {
        // SAFETY: the caller guarantees the array is readable up to and including its NULL
        // terminator, and we stop at the terminator.
        let entry = unsafe { *array.add(index) };
        if entry.is_null() {
            return Ok(Some(out));
        }
        if index == MAX_ARRAY_ENTRIES {
            break;
        }
        // SAFETY: a non-NULL entry points to a NUL-terminated string (caller's contract).
        let s = unsafe { CStr::from_ptr(entry) }
            .to_str()
            .map_err(|_| CapiError::NotUtf8Entry { what, index })?;
        out.push(s.to_owned());
    }
    Err(CapiError::TooManyEntries(what))
}

#[cfg(test)]
#[allow(clippy::undocumented_unsafe_blocks)] // Every call passes a valid or NULL pointer.
mod tests {
    use std::ffi::CString;
    use std::ptr;

    use super::*;

    #[test]
    fn null_and_utf8_checks() {
        // SAFETY: NULL is allowed.
        assert!(matches!(
            unsafe { str_arg(ptr::null(), "path") },
            Err(CapiError::NullPointer("path"))
        ));
        let bad = CString::new(vec![0xffu8, 0xfe]).unwrap();
        // SAFETY: a valid C string.
        assert!(matches!(
            unsafe { str_arg(bad.as_ptr(), "path") },
            Err(CapiError::NotUtf8("path"))
        ));
        let good = CString::new("/disk.img").unwrap();
        // SAFETY: a valid C string.
        assert_eq!(
            unsafe { str_arg(good.as_ptr(), "path") }.unwrap(),
            "/disk.img"
        );
    }

    #[test]
    fn arrays() {
        // SAFETY: NULL is allowed.
        assert_eq!(unsafe { str_array(ptr::null(), "argv") }.unwrap(), None);
        let a = CString::new("a").unwrap();
        let b = CString::new("b").unwrap();
        let arr = [a.as_ptr(), b.as_ptr(), ptr::null()];
        // SAFETY: NULL-terminated array of valid strings.
        assert_eq!(
            unsafe { str_array(arr.as_ptr(), "argv") }.unwrap(),
            Some(vec!["a".to_owned(), "b".to_owned()])
        );
        let empty = [ptr::null::<c_char>()];
        // SAFETY: NULL-terminated.
        assert_eq!(
            unsafe { str_array(empty.as_ptr(), "argv") }.unwrap(),
            Some(vec![])
        );
    }

    #[test]
    fn unterminated_array_is_bounded() {
        let s = CString::new("x").unwrap();
        let mut arr = vec![s.as_ptr(); MAX_ARRAY_ENTRIES + 1];
        arr.push(ptr::null());
        // SAFETY: NULL-terminated, just longer than the bound.
        assert!(matches!(
            unsafe { str_array(arr.as_ptr(), "env") },
            Err(CapiError::TooManyEntries("env"))
        ));
    }
}
