//! XenStore paths: validation with the rules of C xenstored, and resolution of relative paths.
//!
//! The rules (`docs/misc/xenstore.txt`, and `is_valid_nodename`/`valid_chars`/`canonicalize` in Xen
//! 4.17's `tools/xenstore/xenstored_core.c`):
//!
//! - a path is absolute (starts with `/`), relative to the caller's home `/local/domain/<domid>`, or,
//!   for watches and permissions only, a special path starting with `@` (`@introduceDomain`,
//!   `@releaseDomain`, `@releaseDomain/<domid>`);
//! - the only bytes allowed are ASCII letters, digits and `-/_@`: there is no `.` and hence no `.`/`..`
//!   component, so `/local/domain/1/../0` and `../0/x` are refused (xenstored refuses them with
//!   `EINVAL`; it never interprets `..`);
//! - no empty path, no `//`, no trailing `/` except the root `/`;
//! - lengths are counted without the NUL. `io/xs_wire.h` gives 3072 for absolute paths and 2048 for
//!   relative ones; since Xen 4.15 ("tools/xenstore: rework path length check") C xenstored checks one
//!   limit instead, on the resolved path: after removing a leading `/local/domain/<domid>/` (the
//!   `sscanf(node, "/local/domain/%5u/%n", ...)` of `is_valid_nodename`), at most 2048 bytes
//!   (`quota_max_path_len`, [`XENSTORE_REL_PATH_MAX`] by default) may remain. This module enforces both:
//!   the header's limit on the path as sent, and xenstored's on the resolved path.
#![forbid(unsafe_code)]

use super::{XENSTORE_ABS_PATH_MAX, XENSTORE_REL_PATH_MAX, XsWireError};
use crate::DomId;

/// The special watch path fired when a domain is introduced (`docs/misc/xenstore.txt`). No C
/// counterpart in `io/xs_wire.h`.
pub const XS_SPECIAL_INTRODUCE_DOMAIN: &str = "@introduceDomain";
/// The special watch path fired when a domain is released or dies (`docs/misc/xenstore.txt`); a watch
/// on `@releaseDomain/<domid>` only fires for that domain. No C counterpart in `io/xs_wire.h`.
pub const XS_SPECIAL_RELEASE_DOMAIN: &str = "@releaseDomain";

/// The prefix of every domain's home path.
pub const LOCAL_DOMAIN_PREFIX: &str = "/local/domain/";

/// The longest home path, `/local/domain/65535`.
pub const DOMAIN_PATH_MAX: usize = LOCAL_DOMAIN_PREFIX.len() + 5;

/// What kind of path a validated string is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PathKind {
    /// Starts with `/`.
    Absolute,
    /// Relative to the caller's home, `/local/domain/<domid>`.
    Relative,
    /// A special watch path, starting with `@`.
    Special,
}

/// Whether a byte may appear in a path: `[A-Za-z0-9-/_@]` (`valid_chars` in xenstored).
pub const fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'@')
}

/// The length of a leading `/local/domain/<domid>/`, or 0: what xenstored's
/// `sscanf(node, "/local/domain/%5u/%n", ...)` skips before counting a path's length. The domid is 1 to
/// 5 decimal digits (the signs and blanks that `%u` also takes are not path bytes anyway).
pub fn local_domain_prefix_len(path: &[u8]) -> usize {
    let Some(rest) = path.strip_prefix(LOCAL_DOMAIN_PREFIX.as_bytes()) else {
        return 0;
    };
    let digits = rest
        .iter()
        .take(5)
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == 0 || rest.get(digits) != Some(&b'/') {
        return 0;
    }
    LOCAL_DOMAIN_PREFIX.len() + digits + 1
}

/// Checks the characters and slashes of a path body (for a special path, the part after `@`): allowed
/// bytes only, no `//`, no trailing `/` (unless the whole path is `/`). `base` is the offset of `body`
/// in the whole path, for error messages.
fn check_body(
    body: &[u8],
    base: usize,
    whole_len: usize,
    is_root: bool,
) -> Result<(), XsWireError> {
    let mut prev_slash = false;
    for (i, &b) in body.iter().enumerate() {
        if !is_path_byte(b) {
            return Err(XsWireError::PathInvalidChar {
                offset: base + i,
                byte: b,
            });
        }
        let slash = b == b'/';
        if slash && prev_slash {
            return Err(XsWireError::PathDoubleSlash { offset: base + i });
        }
        prev_slash = slash;
    }
    if prev_slash && !is_root {
        return Err(XsWireError::PathTrailingSlash { len: whole_len });
    }
    Ok(())
}

/// Validates a path as a client sent it (without its NUL) and says which kind it is.
///
/// `allow_special` admits `@` paths (WATCH, UNWATCH, GET_PERMS, SET_PERMS); they follow the same
/// character and slash rules and are limited to [`XENSTORE_REL_PATH_MAX`] bytes as in xenstored's
/// `do_watch`. Absolute paths must meet both [`XENSTORE_ABS_PATH_MAX`] and xenstored's counted limit
/// (see the module documentation); relative paths [`XENSTORE_REL_PATH_MAX`].
pub fn check_path(path: &[u8], allow_special: bool) -> Result<PathKind, XsWireError> {
    let len = path.len();
    match path.first() {
        None => Err(XsWireError::EmptyPath),
        Some(b'/') => {
            if len > XENSTORE_ABS_PATH_MAX {
                return Err(XsWireError::AbsPathTooLong { len });
            }
            check_body(path, 0, len, len == 1)?;
            let counted = len - local_domain_prefix_len(path);
            if counted > XENSTORE_REL_PATH_MAX {
                return Err(XsWireError::PathTooLong { len, counted });
            }
            Ok(PathKind::Absolute)
        }
        Some(b'@') => {
            if !allow_special {
                return Err(XsWireError::SpecialPathNotAllowed { len });
            }
            if len > XENSTORE_REL_PATH_MAX {
                return Err(XsWireError::RelPathTooLong { len });
            }
            if len == 1 {
                return Err(XsWireError::EmptyPath);
            }
            check_body(path.get(1..).unwrap_or_default(), 1, len, false)?;
            Ok(PathKind::Special)
        }
        Some(_) => {
            if len > XENSTORE_REL_PATH_MAX {
                return Err(XsWireError::RelPathTooLong { len });
            }
            check_body(path, 0, len, false)?;
            Ok(PathKind::Relative)
        }
    }
}

/// Validates a path that must be absolute (no relative path, no special path).
pub fn check_abs_path(path: &[u8]) -> Result<(), XsWireError> {
    match check_path(path, false)? {
        PathKind::Absolute => Ok(()),
        _ => Err(XsWireError::RelativePathNotAllowed { len: path.len() }),
    }
}

/// Writes the decimal form of `v` into `buf`, returning the digits.
fn decimal(v: u16, buf: &mut [u8; 5]) -> &[u8] {
    let mut n = v;
    let mut i = buf.len();
    loop {
        i -= 1;
        if let Some(slot) = buf.get_mut(i) {
            *slot = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    buf.get(i..).unwrap_or_default()
}

/// Appends `parts` to `out` from offset 0, failing without a partial result when `out` is too small.
fn concat<'o>(out: &'o mut [u8], parts: &[&[u8]]) -> Result<&'o [u8], XsWireError> {
    let needed: usize = parts.iter().map(|p| p.len()).sum();
    let available = out.len();
    let Some(dst) = out.get_mut(..needed) else {
        return Err(XsWireError::BufferTooSmall { needed, available });
    };
    let mut at = 0;
    for p in parts {
        if let Some(d) = dst.get_mut(at..at + p.len()) {
            d.copy_from_slice(p);
        }
        at += p.len();
    }
    Ok(dst)
}

/// Writes the home path of `domid`, `/local/domain/<domid>` (the answer to `GET_DOMAIN_PATH`), into
/// `out` and returns it.
pub fn write_domain_path(domid: DomId, out: &mut [u8]) -> Result<&[u8], XsWireError> {
    let mut digits = [0u8; 5];
    let d = decimal(domid, &mut digits);
    concat(out, &[LOCAL_DOMAIN_PREFIX.as_bytes(), d])
}

/// Validates `path` as sent by domain `domid` and resolves it, as xenstored's `canonicalize` does: an
/// absolute path stays as it is, a relative one becomes `/local/domain/<domid>/<path>`. Writes the
/// result into `out` and returns it. Special `@` paths are refused; see [`resolve_watch_path`].
///
/// ```
/// use xen_abi::xs_wire::resolve_path;
/// let mut buf = [0u8; 64];
/// assert_eq!(resolve_path(b"device/vbd", 3, &mut buf).unwrap(), b"/local/domain/3/device/vbd");
/// assert!(resolve_path(b"../0/secret", 3, &mut buf).is_err());
/// ```
pub fn resolve_path<'o>(
    path: &[u8],
    domid: DomId,
    out: &'o mut [u8],
) -> Result<&'o [u8], XsWireError> {
    resolve(path, domid, out, false)
}

/// Like [`resolve_path`], but special `@` paths are allowed and returned as they are (the path of a
/// WATCH or UNWATCH).
pub fn resolve_watch_path<'o>(
    path: &[u8],
    domid: DomId,
    out: &'o mut [u8],
) -> Result<&'o [u8], XsWireError> {
    resolve(path, domid, out, true)
}

fn resolve<'o>(
    path: &[u8],
    domid: DomId,
    out: &'o mut [u8],
    allow_special: bool,
) -> Result<&'o [u8], XsWireError> {
    match check_path(path, allow_special)? {
        PathKind::Absolute | PathKind::Special => concat(out, &[path]),
        PathKind::Relative => {
            let mut digits = [0u8; 5];
            let d = decimal(domid, &mut digits);
            // A relative path of at most 2048 bytes resolves to at most 2068 bytes, of which xenstored
            // counts exactly the relative part: no further length check is needed.
            concat(out, &[LOCAL_DOMAIN_PREFIX.as_bytes(), d, b"/", path])
        }
    }
}

/// [`resolve_path`] into a new `String`.
#[cfg(feature = "alloc")]
pub fn resolve_path_string(
    path: &[u8],
    domid: DomId,
) -> Result<alloc::string::String, XsWireError> {
    let mut buf = [0u8; DOMAIN_PATH_MAX + 1 + XENSTORE_ABS_PATH_MAX];
    let resolved = resolve_path(path, domid, &mut buf)?;
    // Validated paths are ASCII.
    Ok(resolved.iter().map(|&b| char::from(b)).collect())
}

/// The home path of `domid`, `/local/domain/<domid>`, as a `String`.
#[cfg(feature = "alloc")]
pub fn domain_path(domid: DomId) -> alloc::string::String {
    alloc::format!("{LOCAL_DOMAIN_PREFIX}{domid}")
}

/// Whether `child` is `parent` or below it (`docs/misc/xenstore.txt`: identical, or `parent` is `/`, or
/// `parent/` is a prefix of `child`). This is how watch events are matched against watch paths.
pub fn is_child(child: &[u8], parent: &[u8]) -> bool {
    if child == parent || parent == b"/" {
        return true;
    }
    child.len() > parent.len()
        && child.starts_with(parent)
        && child.get(parent.len()) == Some(&b'/')
}
