//! Just enough of the kernel's BTF (`/sys/kernel/btf/vmlinux`) to find a few struct member
//! offsets: the socket tracepoints need `sock -> net -> ns.inum` to keep to one network namespace.
#![forbid(unsafe_code)]
use anyhow::{bail, Context, Result};

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

struct Type {
    name_off: u32,
    /// Size, or for typedefs, pointers and qualifiers the referenced type id.
    size_or_type: u32,
    kind: u32,
    kind_flag: bool,
    /// Struct/union members: (name offset, type id, bit offset).
    members: Vec<(u32, u32, u32)>,
}

/// The types of a BTF blob, by id (id 0 is `void`).
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
}

fn u32_at(d: &[u8], at: usize) -> Result<u32> {
    d.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).context("BTF is truncated")
}

impl Btf {
    pub fn from_sys_fs() -> Result<Self> {
        let data = std::fs::read("/sys/kernel/btf/vmlinux").context("reading /sys/kernel/btf/vmlinux (the kernel needs CONFIG_DEBUG_INFO_BTF, Linux 5.2+)")?;
        Self::parse(&data)
    }

    pub fn parse(d: &[u8]) -> Result<Self> {
        if d.len() < 24 || u16::from_le_bytes([d[0], d[1]]) != BTF_MAGIC {
            bail!("not little-endian BTF");
        }
        let hdr_len = u32_at(d, 4)? as usize;
        let (type_off, type_len, str_off, str_len) = (u32_at(d, 8)? as usize, u32_at(d, 12)? as usize, u32_at(d, 16)? as usize, u32_at(d, 20)? as usize);
        let types_data = d.get(hdr_len + type_off..hdr_len + type_off + type_len).context("BTF type section out of bounds")?;
        let strings = d.get(hdr_len + str_off..hdr_len + str_off + str_len).context("BTF string section out of bounds")?.to_vec();
        let mut types = vec![Type { name_off: 0, size_or_type: 0, kind: 0, kind_flag: false, members: Vec::new() }];
        let mut at = 0;
        while at < types_data.len() {
            let name_off = u32_at(types_data, at)?;
            let info = u32_at(types_data, at + 4)?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let size_or_type = u32_at(types_data, at + 8)?;
            at += 12;
            let mut members = Vec::new();
            // Bytes that follow the common header, by kind (see the kernel's Documentation/bpf/btf.rst).
            let extra = match kind {
                1 | 14 | 17 => 4, // INT, VAR, DECL_TAG
                3 => 12,          // ARRAY
                KIND_STRUCT | KIND_UNION => {
                    for m in 0..vlen {
                        let base = at + m * 12;
                        members.push((u32_at(types_data, base)?, u32_at(types_data, base + 4)?, u32_at(types_data, base + 8)?));
                    }
                    12 * vlen
                }
                6 | 13 => 8 * vlen,                          // ENUM, FUNC_PROTO
                15 | 19 => 12 * vlen,                        // DATASEC, ENUM64
                2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0, // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
                other => bail!("unknown BTF kind {other}"),
            };
            at += extra;
            types.push(Type { name_off, size_or_type, kind, kind_flag, members });
        }
        Ok(Self { types, strings })
    }

    fn name(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    fn struct_by_name(&self, name: &str) -> Option<u32> {
        self.types.iter().position(|t| t.kind == KIND_STRUCT && !t.members.is_empty() && self.name(t.name_off) == name).map(|i| i as u32)
    }

    /// Byte offset of `member` in the struct or union with id `id`, looking through anonymous
    /// struct/union members; with the member's type id.
    fn member(&self, id: u32, member: &str) -> Option<(u32, u32)> {
        let t = self.types.get(id as usize)?;
        for &(name_off, ty, off) in &t.members {
            let bits = if t.kind_flag { off & 0x00ff_ffff } else { off };
            let name = self.name(name_off);
            if name == member {
                return Some((bits / 8, ty));
            }
            if name.is_empty() {
                if let Some((inner, ty)) = self.member(self.resolve(ty), member) {
                    return Some((bits / 8 + inner, ty));
                }
            }
        }
        None
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> u32 {
        // Bounded: a malformed chain must not loop forever.
        for _ in 0..32 {
            match self.types.get(id as usize) {
                // TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG
                Some(t) if matches!(t.kind, 8..=11 | 18) => id = t.size_or_type,
                _ => break,
            }
        }
        id
    }

    /// Offset of a path of members starting at struct `root`, e.g. `["__sk_common", "skc_net"]`.
    pub fn offset_of(&self, root: &str, path: &[&str]) -> Result<u32> {
        let mut id = self.struct_by_name(root).with_context(|| format!("struct {root} not in the kernel's BTF"))?;
        let mut total = 0;
        for (i, m) in path.iter().enumerate() {
            let (off, ty) = self.member(id, m).with_context(|| format!("struct {root} has no member {}", path[..=i].join(".")))?;
            total += off;
            id = self.resolve(ty);
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the running kernel's own BTF, where there is one.
    #[test]
    fn finds_the_netns_path_in_the_running_kernel() {
        let Ok(btf) = Btf::from_sys_fs() else {
            eprintln!("no /sys/kernel/btf/vmlinux here: nothing to check");
            return;
        };
        // struct sock begins with struct sock_common, so skc_net sits at the same offset in both.
        let in_sock = btf.offset_of("sock", &["__sk_common", "skc_net"]).unwrap();
        let in_common = btf.offset_of("sock_common", &["skc_net"]).unwrap();
        assert_eq!(in_sock, in_common);
        assert!(in_sock > 0 && in_sock < 256, "skc_net at {in_sock}");
        let inum = btf.offset_of("net", &["ns", "inum"]).unwrap();
        assert!(inum > 0 && inum < 4096, "ns.inum at {inum}");
        assert!(btf.offset_of("net", &["no_such_member"]).is_err());
    }

    #[test]
    fn rejects_what_is_not_btf() {
        assert!(Btf::parse(b"definitely not BTF, definitely not").is_err());
    }
}
