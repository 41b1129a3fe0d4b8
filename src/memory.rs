//! Memory the process can give back once started: the executable's dynamic relocation table
//! (`.rela.dyn`), which the loader reads once to relocate pointers and nothing reads again.
//! Finding those pages is done here, in safe code from `/proc/self/exe` and
//! `/proc/self/maps`; giving them back (`madvise`) is `main.rs`'s, the one place with
//! `unsafe`.

use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;

const PAGE_BYTES: u64 = 4096;
const PT_LOAD: u32 = 1;
const PT_GNU_RELRO: u32 = 0x6474_e552;
const PF_W: u32 = 2;

/// A loadable segment of the executable, by virtual address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// `PT_LOAD` or `PT_GNU_RELRO`.
    pub kind: u32,
    /// Mapped writable (a private copy once written: never to be dropped).
    pub writable: bool,
    /// Virtual addresses covered, relative to the load base.
    pub addresses: Range<u64>,
}

/// Why the relocation table's pages could not be located.
#[derive(Debug, thiserror::Error)]
#[error("relocation table not located: {0}")]
pub struct NotLocated(String);

/// The executable's relocation table and segments, read from its ELF headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// `.rela.dyn`'s addresses, relative to the load base.
    pub relocations: Range<u64>,
    /// Every `PT_LOAD` and `PT_GNU_RELRO` segment.
    pub segments: Vec<Segment>,
}

/// The whole pages of `relocations` that lie in one read-only `PT_LOAD` segment and in no
/// RELRO or writable segment, relative to the load base. Such pages were never written, so
/// dropping them can only make a later read fault them back in from the file.
pub fn droppable_pages(layout: &Layout) -> Option<Range<u64>> {
    let start = layout.relocations.start.div_ceil(PAGE_BYTES) * PAGE_BYTES;
    let end = layout.relocations.end / PAGE_BYTES * PAGE_BYTES;
    if start >= end {
        return None;
    }
    let inside_read_only_load = layout.segments.iter().any(|s| {
        s.kind == PT_LOAD && !s.writable && s.addresses.start <= start && end <= s.addresses.end
    });
    let touches_other = layout.segments.iter().any(|s| {
        (s.kind == PT_GNU_RELRO || s.writable) && s.addresses.start < end && start < s.addresses.end
    });
    (inside_read_only_load && !touches_other).then_some(start..end)
}

impl Layout {
    /// Reads the ELF64 little-endian headers of `file`.
    pub fn read(file: &mut (impl Read + Seek)) -> Result<Layout, NotLocated> {
        let fail = |what: &str| NotLocated(what.to_owned());
        let mut header = [0u8; 64];
        file.read_exact(&mut header)
            .map_err(|e| fail(&format!("ELF header: {e}")))?;
        if &header[..4] != b"\x7fELF" || header[4] != 2 || header[5] != 1 {
            return Err(fail("not a 64-bit little-endian ELF file"));
        }
        let (phoff, phentsize, phnum) = (
            u64_at(&header, 0x20),
            u16_at(&header, 0x36),
            u16_at(&header, 0x38),
        );
        let (shoff, shentsize, shnum, shstrndx) = (
            u64_at(&header, 0x28),
            u16_at(&header, 0x3a),
            u16_at(&header, 0x3c),
            u16_at(&header, 0x3e),
        );
        if phentsize < 56 || shentsize < 64 || shstrndx >= shnum {
            return Err(fail("unexpected header sizes"));
        }
        let program_headers = read_table(file, phoff, phentsize, phnum)?;
        let segments = program_headers
            .iter()
            .filter_map(|ph| {
                let kind = u32_at(ph, 0);
                let start = u64_at(ph, 0x10);
                (kind == PT_LOAD || kind == PT_GNU_RELRO).then(|| Segment {
                    kind,
                    writable: u32_at(ph, 4) & PF_W != 0,
                    addresses: start..start + u64_at(ph, 0x28),
                })
            })
            .collect();
        let section_headers = read_table(file, shoff, shentsize, shnum)?;
        let names = &section_headers[usize::from(shstrndx)];
        let names = read_at(file, u64_at(names, 0x18), u64_at(names, 0x20))?;
        let relocations = section_headers
            .iter()
            .find(|sh| {
                let name = usize::try_from(u32_at(sh, 0)).unwrap_or(usize::MAX);
                names
                    .get(name..)
                    .is_some_and(|n| n.starts_with(b".rela.dyn\0"))
            })
            .map(|sh| {
                let start = u64_at(sh, 0x10);
                start..start + u64_at(sh, 0x20)
            })
            .ok_or_else(|| fail("no .rela.dyn section"))?;
        Ok(Layout {
            relocations,
            segments,
        })
    }
}

/// The address the executable is loaded at: the start of its mapping at file offset 0 in
/// `/proc/self/maps` text (the first `PT_LOAD` of a position-independent executable starts
/// at address 0).
pub fn load_base(maps: &str, executable: &str) -> Option<u64> {
    maps.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (range, _perms, offset) = (fields.next()?, fields.next()?, fields.next()?);
        let path = fields.nth(2)?;
        (path == executable && u64::from_str_radix(offset, 16).ok()? == 0)
            .then(|| u64::from_str_radix(range.split('-').next()?, 16).ok())
            .flatten()
    })
}

/// The running executable's droppable relocation pages, as absolute addresses.
pub fn droppable_relocation_pages() -> Result<Option<Range<usize>>, NotLocated> {
    let fail = |e: &dyn std::fmt::Display| NotLocated(e.to_string());
    let executable = std::fs::read_link("/proc/self/exe").map_err(|e| fail(&e))?;
    let mut file = std::fs::File::open("/proc/self/exe").map_err(|e| fail(&e))?;
    let layout = Layout::read(&mut file)?;
    // A non-PIE executable is mapped at its link addresses: base 0.
    let pie = layout
        .segments
        .iter()
        .any(|s| s.kind == PT_LOAD && s.addresses.start == 0);
    let base = if pie {
        let maps = std::fs::read_to_string("/proc/self/maps").map_err(|e| fail(&e))?;
        load_base(&maps, &executable.to_string_lossy())
            .ok_or_else(|| fail(&"the executable's mapping is not in /proc/self/maps"))?
    } else {
        0
    };
    Ok(droppable_pages(&layout).and_then(|pages| {
        let start = usize::try_from(base + pages.start).ok()?;
        let end = usize::try_from(base + pages.end).ok()?;
        Some(start..end)
    }))
}

fn read_table(
    file: &mut (impl Read + Seek),
    offset: u64,
    entry_bytes: u16,
    entries: u16,
) -> Result<Vec<Vec<u8>>, NotLocated> {
    let table = read_at(file, offset, u64::from(entry_bytes) * u64::from(entries))?;
    Ok(table
        .chunks_exact(usize::from(entry_bytes))
        .map(<[u8]>::to_vec)
        .collect())
}

fn read_at(file: &mut (impl Read + Seek), offset: u64, len: u64) -> Result<Vec<u8>, NotLocated> {
    if len > 1 << 20 {
        return Err(NotLocated(format!("a header table of {len} bytes")));
    }
    let mut bytes = vec![0; usize::try_from(len).unwrap_or(0)];
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(&mut bytes))
        .map_err(|e| NotLocated(format!("reading at {offset}: {e}")))?;
    Ok(bytes)
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default())
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(start: u64, end: u64, writable: bool) -> Segment {
        Segment {
            kind: PT_LOAD,
            writable,
            addresses: start..end,
        }
    }

    fn layout(relocations: Range<u64>, segments: Vec<Segment>) -> Layout {
        Layout {
            relocations,
            segments,
        }
    }

    #[test]
    fn only_whole_pages_of_a_read_only_segment_are_droppable() {
        let read_only = load(0, 0x10_0000, false);
        let data = load(0x20_0000, 0x21_0000, true);
        assert_eq!(
            droppable_pages(&layout(
                0x2258..0x8c9f0,
                vec![read_only.clone(), data.clone()]
            )),
            Some(0x3000..0x8c000),
            "rounded inwards to whole pages"
        );
        assert_eq!(
            droppable_pages(&layout(0x2258..0x2f00, vec![read_only.clone()])),
            None,
            "no whole page"
        );
        assert_eq!(
            droppable_pages(&layout(0x20_1000..0x20_8000, vec![read_only.clone(), data])),
            None,
            "in a writable segment"
        );
        let relro = Segment {
            kind: PT_GNU_RELRO,
            writable: false,
            addresses: 0x8_0000..0x9_0000,
        };
        assert_eq!(
            droppable_pages(&layout(0x2258..0x8c9f0, vec![read_only, relro])),
            None,
            "overlapping RELRO"
        );
        assert_eq!(
            droppable_pages(&layout(
                0x2258..0x8c9f0,
                vec![load(0x4000, 0x10_0000, false)]
            )),
            None,
            "not inside one loaded segment"
        );
    }

    #[test]
    fn the_load_base_is_the_executables_mapping_at_offset_zero() {
        let maps = "\
55d0c0a00000-55d0c0a8d000 r--p 00000000 08:01 1234 /usr/bin/xray
55d0c0a8d000-55d0c136b000 r-xp 0028c000 08:01 1234 /usr/bin/xray
7f0000000000-7f0000001000 r--p 00000000 08:01 99 /usr/lib/libc.so.6
";
        assert_eq!(load_base(maps, "/usr/bin/xray"), Some(0x55d0_c0a0_0000));
        assert_eq!(load_base(maps, "/usr/bin/other"), None);
    }

    #[test]
    fn this_test_binarys_relocation_pages_are_found_in_its_read_only_mapping() {
        let mut exe = std::fs::File::open("/proc/self/exe").unwrap();
        let layout = Layout::read(&mut exe).unwrap();
        assert!(!layout.relocations.is_empty());
        let Some(pages) = droppable_relocation_pages().unwrap() else {
            return; // a table smaller than a page: nothing to give back
        };
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let mapping = maps.lines().find_map(|line| {
            let (range, rest) = line.split_once(' ')?;
            let (start, end) = range.split_once('-')?;
            let start = usize::from_str_radix(start, 16).ok()?;
            let end = usize::from_str_radix(end, 16).ok()?;
            (start <= pages.start && pages.end <= end).then(|| rest.to_owned())
        });
        let mapping = mapping.expect("the pages are mapped");
        assert!(mapping.starts_with("r--p"), "{mapping}");
    }

    #[test]
    fn other_files_are_refused() {
        let mut not_elf = std::io::Cursor::new(vec![0u8; 128]);
        assert!(Layout::read(&mut not_elf).is_err());
        let mut short = std::io::Cursor::new(b"\x7fELF".to_vec());
        assert!(Layout::read(&mut short).is_err());
    }
}
