//! Memory the process can give back once started: the executable's dynamic relocation table
//! (`.rela.dyn`), which the loader reads once to relocate pointers and nothing reads again.
//! Finding those pages is done here, in safe code from `/proc/self/exe`, `/proc/self/auxv`
//! and `/proc/self/maps`; giving them back (`madvise`) is `main.rs`'s, the one place with
//! `unsafe`. Every step that cannot be sure gives up: the pages then simply stay.

use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;

const PT_LOAD: u32 = 1;
const PT_PHDR: u32 = 6;
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
    /// Where the segment starts in the file.
    pub file_offset: u64,
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
    /// The program headers' own address (`PT_PHDR`), relative to the load base.
    pub program_headers: Option<u64>,
}

/// The whole pages (of `page_bytes`) of `relocations` that lie in one read-only `PT_LOAD`
/// segment and touch no RELRO or writable segment (widened to whole pages), relative to the
/// load base, with the file offset of their first byte. Such pages were never written, so
/// dropping them can only make a later read fault them back in from the file.
pub fn droppable_pages(layout: &Layout, page_bytes: u64) -> Option<(Range<u64>, u64)> {
    if page_bytes == 0 || !page_bytes.is_power_of_two() {
        return None;
    }
    let start = layout
        .relocations
        .start
        .checked_next_multiple_of(page_bytes)?;
    let end = layout.relocations.end / page_bytes * page_bytes;
    if start >= end {
        return None;
    }
    let touches_other = layout.segments.iter().any(|s| {
        let widened_end = s.addresses.end.checked_next_multiple_of(page_bytes);
        (s.kind == PT_GNU_RELRO || s.writable)
            && s.addresses.start / page_bytes * page_bytes < end
            && widened_end.is_none_or(|widened_end| start < widened_end)
    });
    if touches_other {
        return None;
    }
    let segment = layout.segments.iter().find(|s| {
        s.kind == PT_LOAD && !s.writable && s.addresses.start <= start && end <= s.addresses.end
    })?;
    let file_offset = segment
        .file_offset
        .checked_add(start - segment.addresses.start)?;
    Some((start..end, file_offset))
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
            .filter(|ph| matches!(u32_at(ph, 0), PT_LOAD | PT_GNU_RELRO))
            .map(|ph| {
                let start = u64_at(ph, 0x10);
                Ok(Segment {
                    kind: u32_at(ph, 0),
                    writable: u32_at(ph, 4) & PF_W != 0,
                    addresses: start
                        ..start
                            .checked_add(u64_at(ph, 0x28))
                            .ok_or_else(|| fail("segment overflows"))?,
                    file_offset: u64_at(ph, 0x08),
                })
            })
            .collect::<Result<Vec<_>, NotLocated>>()?;
        let program_headers_address = program_headers
            .iter()
            .find(|ph| u32_at(ph, 0) == PT_PHDR)
            .map(|ph| u64_at(ph, 0x10));
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
            .and_then(|sh| {
                let start = u64_at(sh, 0x10);
                Some(start..start.checked_add(u64_at(sh, 0x20))?)
            })
            .ok_or_else(|| fail("no .rela.dyn section"))?;
        Ok(Layout {
            relocations,
            segments,
            program_headers: program_headers_address,
        })
    }
}

/// `AT_PHDR` (where the kernel mapped the program headers) and `AT_PAGESZ` from
/// `/proc/self/auxv` (pairs of native-endian 64-bit words).
pub fn auxv_phdr_and_page_size(auxv: &[u8]) -> Option<(u64, u64)> {
    const AT_PHDR: u64 = 3;
    const AT_PAGESZ: u64 = 6;
    let (mut phdr, mut page) = (None, None);
    for pair in auxv.chunks_exact(16) {
        let word = |at: usize| u64::from_ne_bytes(pair[at..at + 8].try_into().unwrap_or_default());
        match word(0) {
            AT_PHDR => phdr = Some(word(8)),
            AT_PAGESZ => page = Some(word(8)),
            _ => {}
        }
    }
    Some((phdr?, page?))
}

/// Whether `/proc/self/maps` text maps `pages` (absolute) inside one read-only private
/// mapping of the file with inode `inode`, at file offset `file_offset`: the last check
/// that the pages are the executable's, as computed.
pub fn mapped_as_expected(maps: &str, pages: &Range<u64>, inode: u64, file_offset: u64) -> bool {
    maps.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms), Some(offset), Some(_dev), Some(ino)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            return false;
        };
        let Some((start, end)) = range.split_once('-') else {
            return false;
        };
        let parse = |hex: &str| u64::from_str_radix(hex, 16).ok();
        let (Some(start), Some(end), Some(offset)) = (parse(start), parse(end), parse(offset))
        else {
            return false;
        };
        perms == "r--p"
            && ino.parse::<u64>().ok() == Some(inode)
            && start <= pages.start
            && pages.end <= end
            && offset.checked_add(pages.start - start) == Some(file_offset)
    })
}

/// The running executable's droppable relocation pages, as absolute addresses, or `None`
/// when there is nothing to drop or any check fails.
pub fn droppable_relocation_pages() -> Result<Option<Range<usize>>, NotLocated> {
    use std::os::unix::fs::MetadataExt;
    let fail = |e: &dyn std::fmt::Display| NotLocated(e.to_string());
    // Opening the link gives the mapped file even if the path was replaced since.
    let mut file = std::fs::File::open("/proc/self/exe").map_err(|e| fail(&e))?;
    let inode = file.metadata().map_err(|e| fail(&e))?.ino();
    let layout = Layout::read(&mut file)?;
    let auxv = std::fs::read("/proc/self/auxv").map_err(|e| fail(&e))?;
    let (phdr, page_bytes) =
        auxv_phdr_and_page_size(&auxv).ok_or_else(|| fail(&"no AT_PHDR or AT_PAGESZ"))?;
    let Some(phdr_vaddr) = layout.program_headers else {
        return Ok(None); // no PT_PHDR: the load base is not known for sure
    };
    let base = phdr
        .checked_sub(phdr_vaddr)
        .ok_or_else(|| fail(&"AT_PHDR below PT_PHDR"))?;
    let Some((pages, file_offset)) = droppable_pages(&layout, page_bytes) else {
        return Ok(None);
    };
    let (Some(start), Some(end)) = (base.checked_add(pages.start), base.checked_add(pages.end))
    else {
        return Ok(None);
    };
    let maps = std::fs::read_to_string("/proc/self/maps").map_err(|e| fail(&e))?;
    if !mapped_as_expected(&maps, &(start..end), inode, file_offset) {
        return Err(fail(&"the pages are not mapped as computed"));
    }
    match (usize::try_from(start), usize::try_from(end)) {
        (Ok(start), Ok(end)) => Ok(Some(start..end)),
        _ => Ok(None),
    }
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

    const PAGE: u64 = 4096;

    fn load(start: u64, end: u64, writable: bool) -> Segment {
        Segment {
            kind: PT_LOAD,
            writable,
            addresses: start..end,
            file_offset: start,
        }
    }

    fn relro(start: u64, end: u64) -> Segment {
        Segment {
            kind: PT_GNU_RELRO,
            writable: false,
            addresses: start..end,
            file_offset: start,
        }
    }

    fn layout(relocations: Range<u64>, segments: Vec<Segment>) -> Layout {
        Layout {
            relocations,
            segments,
            program_headers: Some(0x40),
        }
    }

    #[test]
    fn only_whole_pages_of_a_read_only_segment_are_droppable() {
        let read_only = load(0, 0x10_0000, false);
        let data = load(0x20_0000, 0x21_0000, true);
        assert_eq!(
            droppable_pages(
                &layout(0x2258..0x8c9f0, vec![read_only.clone(), data.clone()]),
                PAGE
            ),
            Some((0x3000..0x8c000, 0x3000)),
            "rounded inwards to whole pages"
        );
        assert_eq!(
            droppable_pages(&layout(0x2258..0x8c9f0, vec![read_only.clone()]), 0x1_0000),
            Some((0x1_0000..0x8_0000, 0x1_0000)),
            "64 KB pages"
        );
        assert_eq!(
            droppable_pages(&layout(0x2258..0x8c9f0, vec![read_only.clone()]), 3000),
            None,
            "not a page size"
        );
        assert_eq!(
            droppable_pages(&layout(0x2258..0x2f00, vec![read_only.clone()]), PAGE),
            None,
            "no whole page"
        );
        assert_eq!(
            droppable_pages(
                &layout(0x20_1000..0x20_8000, vec![read_only.clone(), data]),
                PAGE
            ),
            None,
            "in a writable segment"
        );
        assert_eq!(
            droppable_pages(
                &layout(
                    0x2258..0x8c9f0,
                    vec![read_only.clone(), relro(0x8_0000, 0x9_0000)]
                ),
                PAGE
            ),
            None,
            "overlapping RELRO"
        );
        assert_eq!(
            droppable_pages(
                &layout(0x2258..0x8d9f0, vec![read_only, relro(0x8c100, 0x9_0000)]),
                PAGE
            ),
            None,
            "RELRO sharing the last page once widened"
        );
        assert_eq!(
            droppable_pages(
                &layout(0x2258..0x8c9f0, vec![load(0x4000, 0x10_0000, false)]),
                PAGE
            ),
            None,
            "not inside one loaded segment"
        );
    }

    #[test]
    fn the_auxiliary_vector_gives_the_program_headers_and_the_page_size() {
        let mut auxv = Vec::new();
        for (key, value) in [(33u64, 7u64), (3, 0x55d0_c0a0_0040), (6, 4096), (0, 0)] {
            auxv.extend(key.to_ne_bytes());
            auxv.extend(value.to_ne_bytes());
        }
        assert_eq!(
            auxv_phdr_and_page_size(&auxv),
            Some((0x55d0_c0a0_0040, 4096))
        );
        assert_eq!(auxv_phdr_and_page_size(&auxv[..16]), None);
    }

    #[test]
    fn the_pages_must_be_the_executables_at_the_computed_offset() {
        let maps = "\
55d0c0a00000-55d0c0a8d000 r--p 00000000 08:01 1234 /usr/bin/xray (deleted)
55d0c0a8d000-55d0c136b000 r-xp 0028c000 08:01 1234 /usr/bin/xray
7f0000000000-7f0000100000 r--p 00000000 08:01 99 /usr/lib/my file.so
";
        let pages = 0x55d0_c0a0_3000..0x55d0_c0a8_c000;
        assert!(mapped_as_expected(maps, &pages, 1234, 0x3000));
        assert!(!mapped_as_expected(maps, &pages, 1234, 0x4000), "offset");
        assert!(
            !mapped_as_expected(maps, &pages, 99, 0x3000),
            "another file"
        );
        let beyond = 0x55d0_c0a0_3000..0x55d0_c0a9_0000;
        assert!(
            !mapped_as_expected(maps, &beyond, 1234, 0x3000),
            "past the mapping"
        );
        let text = 0x55d0_c0a8_d000..0x55d0_c0a8_e000;
        assert!(
            !mapped_as_expected(maps, &text, 1234, 0x28c000),
            "not read-only data"
        );
    }

    #[test]
    fn this_test_binarys_relocation_pages_are_found_in_its_read_only_mapping() {
        let mut exe = std::fs::File::open("/proc/self/exe").unwrap();
        let layout = Layout::read(&mut exe).unwrap();
        assert!(!layout.relocations.is_empty());
        assert!(layout.program_headers.is_some(), "a PIE has PT_PHDR");
        let pages = droppable_relocation_pages()
            .unwrap()
            .expect("a test binary has many pages of relocations");
        assert!(pages.len() >= 4096, "{pages:?}");
    }

    #[test]
    fn other_files_are_refused() {
        let mut not_elf = std::io::Cursor::new(vec![0u8; 128]);
        assert!(Layout::read(&mut not_elf).is_err());
        let mut short = std::io::Cursor::new(b"\x7fELF".to_vec());
        assert!(Layout::read(&mut short).is_err());
    }
}
