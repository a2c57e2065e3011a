//! Payloads: NUL-separated strings, and the argument shape of each request type
//! (`docs/misc/xenstore.txt`, "Xenstore protocol details").
//!
//! Parsing works on a payload the caller already copied out of the ring or socket; every walk is bounded
//! by the payload, which a framed message keeps at most [`XENSTORE_PAYLOAD_MAX`](super::XENSTORE_PAYLOAD_MAX)
//! bytes. Unlike C xenstored, which ignores bytes after the last NUL of most requests, these parsers
//! insist that every argument the protocol calls a string ends with its NUL
//! ([`XsWireError::MissingNul`]).
#![forbid(unsafe_code)]

use super::{PathKind, XsErrno, XsType, XsWireError, check_path};
use crate::DomId;

/// The NUL-terminated strings at the start of a payload, without their NULs. Bytes after the last NUL
/// are not yielded (see [`Strings::remainder`]).
#[derive(Clone, Debug)]
pub struct Strings<'a> {
    rest: &'a [u8],
}

impl<'a> Strings<'a> {
    /// The strings of `payload`.
    pub fn new(payload: &'a [u8]) -> Self {
        Self { rest: payload }
    }

    /// What is left: after the iterator is exhausted, the bytes after the last NUL (empty when the
    /// payload ends with a NUL).
    pub fn remainder(&self) -> &'a [u8] {
        self.rest
    }
}

impl<'a> Iterator for Strings<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let nul = self.rest.iter().position(|&b| b == 0)?;
        let s = self.rest.get(..nul)?;
        self.rest = self.rest.get(nul + 1..).unwrap_or_default();
        Some(s)
    }
}

/// The number of NUL-terminated strings in a payload, that is the number of NULs
/// (`xs_count_strings`).
pub fn count_strings(payload: &[u8]) -> usize {
    payload.iter().filter(|&&b| b == 0).count()
}

/// Splits a payload into exactly `N` NUL-terminated strings, with nothing after the last NUL.
pub fn split_exact<const N: usize>(
    msg_type: XsType,
    payload: &[u8],
) -> Result<[&[u8]; N], XsWireError> {
    let mut out: [&[u8]; N] = [&[]; N];
    let mut it = Strings::new(payload);
    let mut found = 0;
    for slot in out.iter_mut() {
        match it.next() {
            Some(s) => {
                *slot = s;
                found += 1;
            }
            None => break,
        }
    }
    if found < N {
        return Err(if it.remainder().is_empty() && !payload.is_empty() {
            XsWireError::WrongArgCount {
                msg_type,
                expected: exactly(N),
                found,
            }
        } else {
            XsWireError::MissingNul {
                msg_type,
                arg: found,
            }
        });
    }
    let rest = it.remainder();
    if !rest.is_empty() {
        let extra = count_strings(rest);
        if extra == 0 {
            return Err(XsWireError::MissingNul { msg_type, arg: N });
        }
        return Err(XsWireError::WrongArgCount {
            msg_type,
            expected: exactly(N),
            found: N + extra,
        });
    }
    Ok(out)
}

const fn exactly(n: usize) -> &'static str {
    match n {
        1 => "exactly 1",
        2 => "exactly 2",
        3 => "exactly 3",
        _ => "a fixed number",
    }
}

/// The single NUL-terminated argument of a payload (`onearg` in xenstored: the payload must contain
/// exactly one NUL, at its end). A payload without the final NUL gives [`XsWireError::MissingNul`].
pub fn one_arg(msg_type: XsType, payload: &[u8]) -> Result<&[u8], XsWireError> {
    let [arg] = split_exact::<1>(msg_type, payload)?;
    Ok(arg)
}

/// Parses a domid as XenStore carries it: a decimal number 0..=65535, digits only.
pub fn parse_domid(s: &[u8]) -> Option<DomId> {
    parse_decimal(s).and_then(|v| DomId::try_from(v).ok())
}

/// Parses an unsigned decimal number of 1 to 10 digits that fits a `u32`.
pub fn parse_decimal(s: &[u8]) -> Option<u32> {
    if s.is_empty() || s.len() > 10 {
        return None;
    }
    let mut v: u32 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u32::from(b - b'0'))?;
    }
    Some(v)
}

/// Parses a signed decimal number (an optional `-`, then digits) that fits an `i64`.
fn parse_signed(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut v: i64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(i64::from(b - b'0'))?;
    }
    Some(if neg { -v } else { v })
}

/// What a permission entry grants (the first letter of `<perm-as-string>` in `docs/misc/xenstore.txt`).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PermKind {
    /// `n`: no access.
    None,
    /// `r`: read only.
    Read,
    /// `w`: write only.
    Write,
    /// `b`: both read and write.
    Both,
}

impl PermKind {
    /// The letter on the wire.
    pub const fn letter(self) -> u8 {
        match self {
            PermKind::None => b'n',
            PermKind::Read => b'r',
            PermKind::Write => b'w',
            PermKind::Both => b'b',
        }
    }
}

/// One permission entry, such as `r5`: `<perm-as-string>` in `docs/misc/xenstore.txt`. The first entry
/// of a node names its owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct XsPerm {
    /// What is granted.
    pub kind: PermKind,
    /// To which domain.
    pub domid: DomId,
}

impl XsPerm {
    /// The first entry of a node owned by `owner` that no other domain may read or write unless a
    /// later entry lets it: `n<owner>`.
    pub const fn owner(owner: DomId) -> XsPerm {
        XsPerm {
            kind: PermKind::None,
            domid: owner,
        }
    }

    /// The permissions of a node owned by `owner` and readable by `reader` as well: `n<owner>
    /// r<reader>`, as a toolstack sets them on a device's back-end directory (owner dom0, reader the
    /// guest) and front-end directory (owner the guest, reader dom0).
    pub const fn owner_and_reader(owner: DomId, reader: DomId) -> [XsPerm; 2] {
        [
            XsPerm::owner(owner),
            XsPerm {
                kind: PermKind::Read,
                domid: reader,
            },
        ]
    }

    /// Parses `w<domid>`, `r<domid>`, `b<domid>` or `n<domid>`.
    pub fn parse(s: &[u8]) -> Option<XsPerm> {
        let (&letter, id) = s.split_first()?;
        let kind = match letter {
            b'n' => PermKind::None,
            b'r' => PermKind::Read,
            b'w' => PermKind::Write,
            b'b' => PermKind::Both,
            _ => return None,
        };
        Some(XsPerm {
            kind,
            domid: parse_domid(id)?,
        })
    }

    /// Writes the wire form (without NUL) into `buf` and returns it.
    pub fn write<'b>(&self, buf: &'b mut [u8; 6]) -> &'b [u8] {
        let mut digits = [0u8; 5];
        let mut n = self.domid;
        let mut i = digits.len();
        loop {
            i -= 1;
            if let Some(d) = digits.get_mut(i) {
                *d = b'0' + (n % 10) as u8;
            }
            n /= 10;
            if n == 0 || i == 0 {
                break;
            }
        }
        let d = digits.get(i..).unwrap_or_default();
        buf[0] = self.kind.letter();
        let end = 1 + d.len();
        if let Some(dst) = buf.get_mut(1..end) {
            dst.copy_from_slice(d);
        }
        buf.get(..end).unwrap_or_default()
    }
}

/// A validated list of permission strings (the arguments of `SET_PERMS` after the path, or the
/// answer to `GET_PERMS`): one or more NUL-terminated entries. Iterate to get each [`XsPerm`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PermList<'a> {
    raw: &'a [u8],
}

impl<'a> PermList<'a> {
    /// Validates `raw`: one or more NUL-terminated permission strings and nothing after the last NUL.
    pub fn parse(msg_type: XsType, first_arg: usize, raw: &'a [u8]) -> Result<Self, XsWireError> {
        let mut it = Strings::new(raw);
        let mut n = 0usize;
        for s in it.by_ref() {
            if XsPerm::parse(s).is_none() {
                return Err(XsWireError::InvalidArgument {
                    msg_type,
                    arg: first_arg + n,
                    what: "a permission: n, r, w or b then a domid 0..65535",
                });
            }
            n += 1;
        }
        if !it.remainder().is_empty() {
            return Err(XsWireError::MissingNul {
                msg_type,
                arg: first_arg + n,
            });
        }
        if n == 0 {
            return Err(XsWireError::WrongArgCount {
                msg_type,
                expected: "at least 2",
                found: first_arg,
            });
        }
        Ok(Self { raw })
    }

    /// The raw NUL-terminated strings.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.raw
    }

    /// The entries; the first is the owner.
    pub fn iter(&self) -> impl Iterator<Item = XsPerm> + 'a {
        Strings::new(self.raw).filter_map(XsPerm::parse)
    }
}

/// A request, with its arguments validated for shape (`docs/misc/xenstore.txt`). Paths are checked
/// with [`check_path`] but not resolved; see [`resolve_path`](super::resolve_path).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// `CONTROL <command>|[<parameters>|]`: the parameters are left raw (live-update sends binary).
    Control {
        /// The command.
        command: &'a [u8],
        /// Everything after the command's NUL.
        parameters: &'a [u8],
    },
    /// `DIRECTORY <path>|`.
    Directory {
        /// The node.
        path: &'a [u8],
    },
    /// `DIRECTORY_PART <path>|<offset>|`.
    DirectoryPart {
        /// The node.
        path: &'a [u8],
        /// Byte offset into the list of children.
        offset: u32,
    },
    /// `READ <path>|`.
    Read {
        /// The node.
        path: &'a [u8],
    },
    /// `GET_PERMS <path>|` (special `@` paths allowed).
    GetPerms {
        /// The node.
        path: &'a [u8],
    },
    /// `WATCH <wpath>|<token>|[<depth>|]`.
    Watch {
        /// The watched path (special `@` paths allowed).
        path: &'a [u8],
        /// The caller's token, echoed in events.
        token: &'a [u8],
        /// The optional depth limit.
        depth: Option<u32>,
    },
    /// `UNWATCH <wpath>|<token>|`.
    Unwatch {
        /// The watched path.
        path: &'a [u8],
        /// The token.
        token: &'a [u8],
    },
    /// `TRANSACTION_START |` (the payload is reserved and not checked, as in xenstored).
    TransactionStart,
    /// `TRANSACTION_END T|` or `F|`.
    TransactionEnd {
        /// `T`: commit; `F`: abort.
        commit: bool,
    },
    /// `INTRODUCE <domid>|<gfn>|<evtchn>|?`.
    Introduce {
        /// The domain.
        domid: DomId,
        /// The frame of its XenStore page, signed decimal on the wire.
        gfn: i64,
        /// Its unbound event channel.
        evtchn: u32,
    },
    /// `RELEASE <domid>|`.
    Release {
        /// The domain.
        domid: DomId,
    },
    /// `GET_DOMAIN_PATH <domid>|`.
    GetDomainPath {
        /// The domain.
        domid: DomId,
    },
    /// `WRITE <path>|<value|>`: the value is binary and may contain NULs.
    Write {
        /// The node.
        path: &'a [u8],
        /// The value.
        value: &'a [u8],
    },
    /// `MKDIR <path>|`.
    Mkdir {
        /// The node.
        path: &'a [u8],
    },
    /// `RM <path>|`.
    Rm {
        /// The node.
        path: &'a [u8],
    },
    /// `SET_PERMS <path>|<perm-as-string>|+`.
    SetPerms {
        /// The node (special `@` paths allowed).
        path: &'a [u8],
        /// The new permissions; the first is the owner.
        perms: PermList<'a>,
    },
    /// `IS_DOMAIN_INTRODUCED <domid>|`.
    IsDomainIntroduced {
        /// The domain.
        domid: DomId,
    },
    /// `RESUME <domid>|`.
    Resume {
        /// The domain.
        domid: DomId,
    },
    /// `SET_TARGET <domid>|<tdomid>|`.
    SetTarget {
        /// The domain that gets the rights.
        domid: DomId,
        /// The domain it acts for.
        target: DomId,
    },
    /// `RESET_WATCHES |` (the payload is not checked, as in xenstored).
    ResetWatches,
}

fn domid_arg(msg_type: XsType, arg: usize, s: &[u8]) -> Result<DomId, XsWireError> {
    parse_domid(s).ok_or(XsWireError::InvalidArgument {
        msg_type,
        arg,
        what: "a decimal domid 0..65535",
    })
}

fn node_path(path: &[u8], allow_special: bool) -> Result<&[u8], XsWireError> {
    check_path(path, allow_special)?;
    Ok(path)
}

impl<'a> Request<'a> {
    /// Parses the payload of a request of type `msg_type`. `WATCH_EVENT` and `ERROR` are not requests
    /// ([`XsWireError::NotARequest`]).
    pub fn parse(msg_type: XsType, payload: &'a [u8]) -> Result<Request<'a>, XsWireError> {
        let t = msg_type;
        Ok(match msg_type {
            XsType::Control => {
                let Some(nul) = payload.iter().position(|&b| b == 0) else {
                    return Err(XsWireError::MissingNul {
                        msg_type: t,
                        arg: 0,
                    });
                };
                Request::Control {
                    command: payload.get(..nul).unwrap_or_default(),
                    parameters: payload.get(nul + 1..).unwrap_or_default(),
                }
            }
            XsType::Directory => Request::Directory {
                path: node_path(one_arg(t, payload)?, false)?,
            },
            XsType::Read => Request::Read {
                path: node_path(one_arg(t, payload)?, false)?,
            },
            XsType::GetPerms => Request::GetPerms {
                path: node_path(one_arg(t, payload)?, true)?,
            },
            XsType::Mkdir => Request::Mkdir {
                path: node_path(one_arg(t, payload)?, false)?,
            },
            XsType::Rm => Request::Rm {
                path: node_path(one_arg(t, payload)?, false)?,
            },
            XsType::DirectoryPart => {
                let [path, offset] = split_exact::<2>(t, payload)?;
                let offset = parse_decimal(offset).ok_or(XsWireError::InvalidArgument {
                    msg_type: t,
                    arg: 1,
                    what: "a decimal byte offset",
                })?;
                Request::DirectoryPart {
                    path: node_path(path, false)?,
                    offset,
                }
            }
            XsType::Watch => {
                let n = count_strings(payload);
                let (path, token, depth) = if n == 3 {
                    let [p, tok, d] = split_exact::<3>(t, payload)?;
                    let d = parse_decimal(d).ok_or(XsWireError::InvalidArgument {
                        msg_type: t,
                        arg: 2,
                        what: "a decimal depth",
                    })?;
                    (p, tok, Some(d))
                } else {
                    let [p, tok] = split_exact::<2>(t, payload)?;
                    (p, tok, None)
                };
                Request::Watch {
                    path: node_path(path, true)?,
                    token,
                    depth,
                }
            }
            XsType::Unwatch => {
                let [path, token] = split_exact::<2>(t, payload)?;
                Request::Unwatch {
                    path: node_path(path, true)?,
                    token,
                }
            }
            XsType::TransactionStart => Request::TransactionStart,
            XsType::TransactionEnd => match one_arg(t, payload)? {
                b"T" => Request::TransactionEnd { commit: true },
                b"F" => Request::TransactionEnd { commit: false },
                _ => {
                    return Err(XsWireError::InvalidArgument {
                        msg_type: t,
                        arg: 0,
                        what: "T or F",
                    });
                }
            },
            XsType::Introduce => {
                let mut it = Strings::new(payload);
                let mut args: [&[u8]; 3] = [&[]; 3];
                for (i, slot) in args.iter_mut().enumerate() {
                    *slot = match it.next() {
                        Some(s) => s,
                        None if it.remainder().is_empty() => {
                            return Err(XsWireError::WrongArgCount {
                                msg_type: t,
                                expected: "at least 3",
                                found: i,
                            });
                        }
                        None => {
                            return Err(XsWireError::MissingNul {
                                msg_type: t,
                                arg: i,
                            });
                        }
                    };
                }
                let [domid, gfn, evtchn] = args;
                Request::Introduce {
                    domid: domid_arg(t, 0, domid)?,
                    gfn: parse_signed(gfn).ok_or(XsWireError::InvalidArgument {
                        msg_type: t,
                        arg: 1,
                        what: "a signed decimal gfn",
                    })?,
                    evtchn: parse_decimal(evtchn).ok_or(XsWireError::InvalidArgument {
                        msg_type: t,
                        arg: 2,
                        what: "a decimal event channel",
                    })?,
                }
            }
            XsType::Release => Request::Release {
                domid: domid_arg(t, 0, one_arg(t, payload)?)?,
            },
            XsType::GetDomainPath => Request::GetDomainPath {
                domid: domid_arg(t, 0, one_arg(t, payload)?)?,
            },
            XsType::IsDomainIntroduced => Request::IsDomainIntroduced {
                domid: domid_arg(t, 0, one_arg(t, payload)?)?,
            },
            XsType::Resume => Request::Resume {
                domid: domid_arg(t, 0, one_arg(t, payload)?)?,
            },
            XsType::SetTarget => {
                let [d, target] = split_exact::<2>(t, payload)?;
                Request::SetTarget {
                    domid: domid_arg(t, 0, d)?,
                    target: domid_arg(t, 1, target)?,
                }
            }
            XsType::Write => {
                let Some(nul) = payload.iter().position(|&b| b == 0) else {
                    return Err(XsWireError::MissingNul {
                        msg_type: t,
                        arg: 0,
                    });
                };
                let path = payload.get(..nul).unwrap_or_default();
                Request::Write {
                    path: node_path(path, false)?,
                    value: payload.get(nul + 1..).unwrap_or_default(),
                }
            }
            XsType::SetPerms => {
                let Some(nul) = payload.iter().position(|&b| b == 0) else {
                    return Err(XsWireError::MissingNul {
                        msg_type: t,
                        arg: 0,
                    });
                };
                let path = payload.get(..nul).unwrap_or_default();
                let perms = PermList::parse(t, 1, payload.get(nul + 1..).unwrap_or_default())?;
                Request::SetPerms {
                    path: node_path(path, true)?,
                    perms,
                }
            }
            XsType::ResetWatches => Request::ResetWatches,
            XsType::WatchEvent | XsType::Error => {
                return Err(XsWireError::NotARequest { msg_type });
            }
        })
    }
}

/// A `WATCH_EVENT` payload, `<epath>|<token>|` ([`XS_WATCH_PATH`](super::XS_WATCH_PATH),
/// [`XS_WATCH_TOKEN`](super::XS_WATCH_TOKEN)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchEvent<'a> {
    /// The path that changed: absolute, relative (if the watch was), or special.
    pub path: &'a [u8],
    /// The token of the watch.
    pub token: &'a [u8],
}

impl<'a> WatchEvent<'a> {
    /// Parses and checks a `WATCH_EVENT` payload: exactly two NUL-terminated strings, a valid path.
    pub fn parse(payload: &'a [u8]) -> Result<Self, XsWireError> {
        let [path, token] = split_exact::<2>(XsType::WatchEvent, payload)?;
        check_path(path, true)?;
        Ok(Self { path, token })
    }

    /// The kind of the event's path.
    pub fn path_kind(&self) -> PathKind {
        match self.path.first() {
            Some(b'/') => PathKind::Absolute,
            Some(b'@') => PathKind::Special,
            _ => PathKind::Relative,
        }
    }
}

/// Parses an `XS_ERROR` payload, `E<something>|`.
pub fn parse_error(payload: &[u8]) -> Result<XsErrno, XsWireError> {
    let len = payload.len();
    let [name] = split_exact::<1>(XsType::Error, payload)?;
    XsErrno::from_name(name).ok_or(XsWireError::UnknownErrorName { len })
}
