// SPDX-License-Identifier: GPL-2.0

//! Page records (`VIRTIO_BALLOON_F_PAGE_RANGES`, feature bit 16): one format for inflate, deflate
//! and free page information, with runs, bitmaps and frame lists mixed in one buffer (the full
//! text is `docs/spec/page-ranges.md`).
//!
//! A buffer is a header and records, every field little-endian, every record 8-byte aligned:
//!
//! ```text
//! header (8 bytes):  u8 version (1) | u8 reserved (0) | le16 nr_records | le32 reserved (0)
//! record (16 bytes): u8 type | u8 reserved[3] (0) | le32 count | le64 pfn
//!   type 1, run:    frames pfn .. pfn + count (count >= 1)
//!   type 2, bitmap: followed by ceil(count / 64) le64 words; bit i of word w set: frame
//!                   pfn + 64 w + i (1 <= count <= MAX_BITMAP_BITS; bits >= count are 0)
//!   type 3, list:   followed by count le32 offsets, strictly ascending, then zeroes up to the
//!                   next multiple of 8 bytes: frames pfn + offset (count >= 1)
//! ```
//!
//! Frames are 4 KiB and 64-bit. Records come in ascending order of frames and never overlap: a
//! record starts at or after the end of the one before it. A decoder checks a whole buffer
//! before it hands out a single range ([`decode`]), and rejects anything else.
//!
//! The encoder ([`encode`]) chooses per region by fixed rules, which bound a buffer's size
//! without minimising it: runs for ranges of at least [`RUN_MIN_PAGES`] (and for a shorter one
//! that no longer fits a list at the end of the buffer), bitmaps where short ranges are dense
//! enough to save [`SAVING_MIN`] bytes against the standard format, frame lists for what is left.
//! A buffer never takes more than the standard format (4 bytes a page) plus [`OVERHEAD_BYTES`]
//! for the frames below 2^32 it holds.

use super::hint::Range;

/// The format's version, first byte of every buffer.
pub(crate) const VERSION: u8 = 1;
/// Bytes of the header.
pub(crate) const HEADER_BYTES: usize = 8;
/// Bytes of a record before its payload.
pub(crate) const RECORD_BYTES: usize = 16;
/// Record types.
pub(crate) const TYPE_RUN: u8 = 1;
pub(crate) const TYPE_BITMAP: u8 = 2;
pub(crate) const TYPE_LIST: u8 = 3;
/// Bits of a bitmap record at most (4 KiB of bitmap, 128 MiB of guest memory).
pub(crate) const MAX_BITMAP_BITS: u32 = 32768;
/// The largest buffer a driver sends: order 3 with 4 KiB pages.
pub(crate) const MAX_BUFFER_BYTES: usize = 32768;
/// What a run or a bitmap must save against the standard format (4 bytes a page): the header
/// and padding of the list record that may follow it.
const SAVING_MIN: usize = RECORD_BYTES + 8;
/// Ranges at least this long always travel as runs: a run record then saves [`SAVING_MIN`].
pub(crate) const RUN_MIN_PAGES: u64 = ((RECORD_BYTES + SAVING_MIN) / 4) as u64;
/// Bytes a buffer may take beyond the standard format for the same frames (below 2^32): the
/// header, the header and padding of its first list record, and one run record for a range that
/// no longer fits a list at the end of the buffer.
#[allow(dead_code)] // The driver only encodes; the decoder is the reference for devices.
pub(crate) const OVERHEAD_BYTES: usize = HEADER_BYTES + SAVING_MIN + RECORD_BYTES;
/// Ranges the encoder looks ahead over when it weighs a bitmap.
const LOOKAHEAD: usize = 512;

/// Why a buffer was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(dead_code)] // The driver only encodes; the decoder is the reference for devices.
pub(crate) enum DecodeError {
    /// Shorter than its header or a record says.
    Truncated,
    /// An unknown version.
    Version,
    /// A reserved field or padding is not zero.
    Reserved,
    /// An unknown record type.
    Type,
    /// A count of zero, or a bitmap over `MAX_BITMAP_BITS`.
    Count,
    /// A frame number that does not fit in 64 bits.
    Overflow,
    /// A frame at or beyond the limit the device gave (its memory).
    Beyond,
    /// A record that starts before the end of the previous one, or list offsets not ascending.
    Order,
    /// Bits set beyond a bitmap's count.
    BitmapTail,
    /// Bytes left after the records the header announced.
    Trailing,
}

#[allow(dead_code)] // The driver only encodes; the decoder is the reference for devices.
fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

#[allow(dead_code)] // The driver only encodes; the decoder is the reference for devices.
fn le32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

#[allow(dead_code)] // The driver only encodes; the decoder is the reference for devices.
fn le64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at + 8)?;
    let mut w = [0u8; 8];
    w.copy_from_slice(s);
    Some(u64::from_le_bytes(w))
}

/// What a checked buffer holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(dead_code)] // The driver only encodes; the decoder is the reference for devices.
pub(crate) struct Summary {
    /// Records of each type.
    pub(crate) runs: u32,
    pub(crate) bitmaps: u32,
    pub(crate) lists: u32,
    /// Frames named.
    pub(crate) pages: u64,
}

/// One record, checked.
#[allow(dead_code)] // The driver only encodes; the decoder is the reference for devices.
enum Rec<'a> {
    Run {
        pfn: u64,
        count: u32,
    },
    Bitmap {
        pfn: u64,
        count: u32,
        words: &'a [u8],
    },
    List {
        pfn: u64,
        offsets: &'a [u8],
    },
}

/// Walks the records of `buf`, checking each against the rules and `limit_pfn`, and hands each
/// one to `f`. Stops at the first error.
#[allow(dead_code)] // The driver only encodes; the decoder is the reference for devices.
fn walk<'a>(
    buf: &'a [u8],
    limit_pfn: u64,
    mut f: impl FnMut(Rec<'a>),
) -> Result<Summary, DecodeError> {
    let version = *buf.first().ok_or(DecodeError::Truncated)?;
    if buf.len() < HEADER_BYTES {
        return Err(DecodeError::Truncated);
    }
    if version != VERSION {
        return Err(DecodeError::Version);
    }
    let nr = le16(buf, 2).ok_or(DecodeError::Truncated)?;
    if buf[1] != 0 || le32(buf, 4) != Some(0) {
        return Err(DecodeError::Reserved);
    }
    let mut at = HEADER_BYTES;
    let mut next_free = 0u64;
    let mut sum = Summary::default();
    for _ in 0..nr {
        let head = buf
            .get(at..at + RECORD_BYTES)
            .ok_or(DecodeError::Truncated)?;
        let ty = head[0];
        if head[1..4] != [0, 0, 0] {
            return Err(DecodeError::Reserved);
        }
        let count = le32(head, 4).ok_or(DecodeError::Truncated)?;
        let pfn = le64(head, 8).ok_or(DecodeError::Truncated)?;
        if count == 0 {
            return Err(DecodeError::Count);
        }
        at += RECORD_BYTES;
        // First frame, frame after the last, payload bytes.
        let (first, end, payload) = match ty {
            TYPE_RUN => {
                let end = pfn
                    .checked_add(u64::from(count))
                    .ok_or(DecodeError::Overflow)?;
                (pfn, end, 0)
            }
            TYPE_BITMAP => {
                if count > MAX_BITMAP_BITS {
                    return Err(DecodeError::Count);
                }
                let end = pfn
                    .checked_add(u64::from(count))
                    .ok_or(DecodeError::Overflow)?;
                (pfn, end, (count as usize).div_ceil(64) * 8)
            }
            TYPE_LIST => {
                let bytes = (count as usize)
                    .checked_mul(4)
                    .ok_or(DecodeError::Truncated)?;
                let offs = buf.get(at..at + bytes).ok_or(DecodeError::Truncated)?;
                let first_off = le32(offs, 0).ok_or(DecodeError::Truncated)?;
                let last_off = le32(offs, bytes - 4).ok_or(DecodeError::Truncated)?;
                let first = pfn
                    .checked_add(u64::from(first_off))
                    .ok_or(DecodeError::Overflow)?;
                let end = pfn
                    .checked_add(u64::from(last_off))
                    .and_then(|l| l.checked_add(1))
                    .ok_or(DecodeError::Overflow)?;
                (first, end, bytes.next_multiple_of(8))
            }
            _ => return Err(DecodeError::Type),
        };
        if first < next_free {
            return Err(DecodeError::Order);
        }
        if end > limit_pfn {
            return Err(DecodeError::Beyond);
        }
        let body = buf.get(at..at + payload).ok_or(DecodeError::Truncated)?;
        match ty {
            TYPE_RUN => {
                sum.runs += 1;
                sum.pages += u64::from(count);
                f(Rec::Run { pfn, count });
            }
            TYPE_BITMAP => {
                let tail = count % 64;
                if tail != 0 {
                    let last = le64(body, payload - 8).ok_or(DecodeError::Truncated)?;
                    if last >> tail != 0 {
                        return Err(DecodeError::BitmapTail);
                    }
                }
                sum.bitmaps += 1;
                sum.pages += body
                    .chunks_exact(8)
                    .map(|w| u64::from(w.iter().map(|b| b.count_ones()).sum::<u32>()))
                    .sum::<u64>();
                f(Rec::Bitmap {
                    pfn,
                    count,
                    words: body,
                });
            }
            _ => {
                let bytes = count as usize * 4;
                let (offs, pad) = body.split_at(bytes);
                if pad.iter().any(|&b| b != 0) {
                    return Err(DecodeError::Reserved);
                }
                let mut prev: Option<u32> = None;
                for o in offs.chunks_exact(4) {
                    let o = u32::from_le_bytes([o[0], o[1], o[2], o[3]]);
                    if prev.is_some_and(|p| o <= p) {
                        return Err(DecodeError::Order);
                    }
                    prev = Some(o);
                }
                sum.lists += 1;
                sum.pages += u64::from(count);
                f(Rec::List { pfn, offsets: offs });
            }
        }
        next_free = end;
        at += payload;
    }
    if at != buf.len() {
        return Err(DecodeError::Trailing);
    }
    Ok(sum)
}

/// Checks a whole buffer (frames must lie below `limit_pfn`), then hands every range it names
/// to `f`, in ascending order (adjacent frames of one record merged). Nothing reaches `f` when
/// the buffer is rejected.
#[allow(dead_code)] // The driver only encodes; the decoder is the reference for devices.
pub(crate) fn decode(
    buf: &[u8],
    limit_pfn: u64,
    mut f: impl FnMut(Range),
) -> Result<Summary, DecodeError> {
    let sum = walk(buf, limit_pfn, |_| {})?;
    // Checked: the second walk cannot fail.
    let _ = walk(buf, limit_pfn, |rec| match rec {
        Rec::Run { pfn, count } => f(Range {
            pfn,
            pages: u64::from(count),
        }),
        Rec::Bitmap { pfn, count, words } => {
            let mut run: Option<Range> = None;
            for bit in 0..u64::from(count) {
                let byte = words[(bit / 8) as usize];
                let set = byte & (1 << (bit % 8)) != 0;
                match (&mut run, set) {
                    (Some(r), true) => r.pages += 1,
                    (None, true) => {
                        run = Some(Range {
                            pfn: pfn + bit,
                            pages: 1,
                        })
                    }
                    (Some(_), false) => {
                        if let Some(r) = run.take() {
                            f(r);
                        }
                    }
                    (None, false) => {}
                }
            }
            if let Some(r) = run {
                f(r);
            }
        }
        Rec::List { pfn, offsets } => {
            let mut run: Option<Range> = None;
            for o in offsets.chunks_exact(4) {
                let frame = pfn + u64::from(u32::from_le_bytes([o[0], o[1], o[2], o[3]]));
                match &mut run {
                    Some(r) if r.end() == frame => r.pages += 1,
                    _ => {
                        if let Some(r) = run.replace(Range {
                            pfn: frame,
                            pages: 1,
                        }) {
                            f(r);
                        }
                    }
                }
            }
            if let Some(r) = run {
                f(r);
            }
        }
    });
    Ok(sum)
}

/// What [`encode`] put in a buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Encoded {
    /// Bytes written (0: not even a header fitted, or no range was given).
    pub(crate) bytes: usize,
    /// Input ranges the buffer holds, from the first.
    pub(crate) ranges: usize,
    /// Records of each type.
    pub(crate) runs: u32,
    pub(crate) bitmaps: u32,
    pub(crate) lists: u32,
}

/// Writes records into `out`.
struct Writer<'a> {
    out: &'a mut [u8],
    len: usize,
    nr: u16,
}

impl Writer<'_> {
    fn room(&self) -> usize {
        self.out.len() - self.len
    }

    fn record(&mut self, ty: u8, count: u32, pfn: u64) {
        let r = &mut self.out[self.len..self.len + RECORD_BYTES];
        r[0] = ty;
        r[1..4].fill(0);
        r[4..8].copy_from_slice(&count.to_le_bytes());
        r[8..16].copy_from_slice(&pfn.to_le_bytes());
        self.len += RECORD_BYTES;
        self.nr += 1;
    }
}

/// Cost in bytes of a bitmap record over `span` frames.
fn bitmap_cost(span: u64) -> usize {
    RECORD_BYTES + (span as usize).div_ceil(64) * 8
}

/// Writes as many of `ranges` as fit into `out`, from the first, and returns what it wrote.
///
/// `ranges` must be sorted, non-overlapping and non-empty (as `hint::coalesce` leaves them).
/// A range is never split across buffers: the next buffer starts with the first range this one
/// did not take.
pub(crate) fn encode(ranges: &[Range], out: &mut [u8]) -> Encoded {
    let mut done = Encoded::default();
    if out.len() < HEADER_BYTES + RECORD_BYTES || ranges.is_empty() {
        return done;
    }
    let limit = out.len().min(MAX_BUFFER_BYTES);
    let mut w = Writer {
        out: &mut out[..limit],
        len: HEADER_BYTES,
        nr: 0,
    };
    // The open list record: where its header is, its base, its frames so far.
    let mut list: Option<(usize, u64, u32)> = None;
    let mut i = 0;
    while i < ranges.len() && w.nr < u16::MAX {
        let r = ranges[i];
        if r.pages >= RUN_MIN_PAGES {
            // A run longer than 2^32 - 1 pages takes several records.
            let recs = r.pages.div_ceil(u64::from(u32::MAX)) as usize;
            if recs * RECORD_BYTES + 4 > w.room()
                || usize::from(w.nr) + recs > usize::from(u16::MAX)
            {
                break;
            }
            close_list(&mut w, &mut list);
            let mut left = r.pages;
            let mut pfn = r.pfn;
            while left > 0 {
                let n = left.min(u64::from(u32::MAX));
                w.record(TYPE_RUN, n as u32, pfn);
                done.runs += 1;
                pfn += n;
                left -= n;
            }
            i += 1;
            continue;
        }
        // Room left once an open list is padded.
        if let Some(j) = bitmap_worth(ranges, i, w.room().saturating_sub(4)) {
            close_list(&mut w, &mut list);
            write_bitmap(&mut w, &ranges[i..j]);
            done.bitmaps += 1;
            i = j;
            continue;
        }
        // Into the open list if the frames fit its 32-bit offsets, else a new list.
        let fits = list.is_some_and(|(_, base, _)| r.end() - base <= u64::from(u32::MAX) + 1);
        let need = if fits { 0 } else { RECORD_BYTES } + (r.pages as usize) * 4 + 4;
        if need > w.room() {
            // The frames do not fit in a list any more; a run (never larger) may.
            if RECORD_BYTES + 4 > w.room() {
                break;
            }
            close_list(&mut w, &mut list);
            w.record(TYPE_RUN, r.pages as u32, r.pfn);
            done.runs += 1;
            i += 1;
            continue;
        }
        if !fits {
            close_list(&mut w, &mut list);
            let at = w.len;
            w.record(TYPE_LIST, 0, r.pfn);
            list = Some((at, r.pfn, 0));
            done.lists += 1;
        }
        if let Some((_, base, n)) = &mut list {
            for f in r.pfn..r.end() {
                let off = (f - *base) as u32;
                w.out[w.len..w.len + 4].copy_from_slice(&off.to_le_bytes());
                w.len += 4;
                *n += 1;
            }
        }
        i += 1;
    }
    close_list(&mut w, &mut list);
    if w.nr == 0 {
        return done;
    }
    w.out[0] = VERSION;
    w.out[1] = 0;
    w.out[2..4].copy_from_slice(&w.nr.to_le_bytes());
    w.out[4..8].fill(0);
    done.bytes = w.len;
    done.ranges = i;
    done
}

/// Ends the open list record: its count, and zero padding to 8 bytes.
fn close_list(w: &mut Writer<'_>, list: &mut Option<(usize, u64, u32)>) {
    if let Some((at, _, n)) = list.take() {
        w.out[at + 4..at + 8].copy_from_slice(&n.to_le_bytes());
        let pad = w.len.next_multiple_of(8) - w.len;
        w.out[w.len..w.len + pad].fill(0);
        w.len += pad;
    }
}

/// Whether short ranges from `i` on are dense enough for a bitmap that saves [`SAVING_MIN`] over
/// the standard format (so the list record that may follow is paid for); returns the end of the
/// best such group, which fits in `room` bytes.
fn bitmap_worth(ranges: &[Range], i: usize, room: usize) -> Option<usize> {
    let base = ranges[i].pfn;
    let mut pages = 0u64;
    let mut best: Option<(usize, i64)> = None;
    for (k, r) in ranges.iter().enumerate().skip(i).take(LOOKAHEAD) {
        if r.pages >= RUN_MIN_PAGES {
            break;
        }
        let span = r.end() - base;
        if span > u64::from(MAX_BITMAP_BITS) || bitmap_cost(span) > room {
            break;
        }
        pages += r.pages;
        // Savings against the standard format, beyond what the next list record may cost.
        let saving = (pages as i64) * 4 - bitmap_cost(span) as i64 - SAVING_MIN as i64;
        if saving >= 0 && !matches!(best, Some((_, s)) if s >= saving) {
            best = Some((k + 1, saving));
        }
    }
    best.map(|(j, _)| j)
}

/// Writes one bitmap record for `group` (short ranges within `MAX_BITMAP_BITS`).
fn write_bitmap(w: &mut Writer<'_>, group: &[Range]) {
    let (Some(first), Some(last)) = (group.first(), group.last()) else {
        return;
    };
    let base = first.pfn;
    let bits = last.end() - base;
    w.record(TYPE_BITMAP, bits as u32, base);
    let bytes = (bits as usize).div_ceil(64) * 8;
    let words = &mut w.out[w.len..w.len + bytes];
    words.fill(0);
    for r in group {
        for f in r.pfn..r.end() {
            let bit = (f - base) as usize;
            words[bit / 8] |= 1 << (bit % 8);
        }
    }
    w.len += bytes;
}

/// Bytes a range of `pages` frames can take in a buffer, at most: a run record (and the room the
/// encoder keeps for padding), or a list record of its own with its offsets and padding. A
/// bitmap is only chosen where it is smaller than the list.
const fn range_cost(pages: u64) -> usize {
    if pages >= RUN_MIN_PAGES {
        RECORD_BYTES + 4
    } else {
        RECORD_BYTES + 4 * pages as usize + 4
    }
}

/// The most a range of one buffer can cost ([`range_cost`] of the longest range that is not a
/// run).
const RANGE_COST_MAX: usize = range_cost(RUN_MIN_PAGES - 1);

/// Bytes `ranges` ranges (sorted, merged) take encoded, at most.
pub(crate) const fn max_bytes(ranges: usize) -> usize {
    HEADER_BYTES + ranges * RANGE_COST_MAX
}

/// Ranges one buffer of [`MAX_BUFFER_BYTES`] can hold, at most.
pub(crate) const RANGES_PER_BUFFER: usize = (MAX_BUFFER_BYTES - HEADER_BYTES) / range_cost(1);

/// Frames collected, one at a time in any order, for one record buffer of [`MAX_BUFFER_BYTES`].
///
/// Frames go into ranges the caller provides (at most [`RANGES_PER_BUFFER`] are used); a frame
/// next to the last range (above or below it) extends it. The collector keeps a bound on the
/// encoded size and refuses a frame that could make the buffer overflow, so [`Collector::finish`]
/// always encodes every frame collected.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Collector {
    nranges: usize,
    pages: u64,
    /// Bytes the ranges take encoded, at most (the header included).
    bound: usize,
}

impl Collector {
    /// An empty collector.
    pub(crate) const fn new() -> Self {
        Self {
            nranges: 0,
            pages: 0,
            bound: HEADER_BYTES,
        }
    }

    /// Frames collected.
    pub(crate) fn pages(&self) -> u64 {
        self.pages
    }

    /// Adds frame `pfn` (not collected yet) to `ranges`; false, with nothing changed, when the
    /// buffer could overflow.
    pub(crate) fn push(&mut self, ranges: &mut [Range], pfn: u64) -> bool {
        self.push_range(ranges, pfn, 1)
    }

    /// Adds the `pages` frames from `pfn` (none collected yet) to `ranges`; false, with nothing
    /// changed, when the buffer could overflow or `pages` is 0.
    pub(crate) fn push_range(&mut self, ranges: &mut [Range], pfn: u64, pages: u64) -> bool {
        // Fewer than 2^32 frames: merged ranges then never need splitting, which could cost more
        // than the bound counted.
        if pages == 0 || pages > u64::from(u32::MAX) - self.pages {
            return false;
        }
        let Some(end) = pfn.checked_add(pages) else {
            return false;
        };
        if let Some(last) = ranges[..self.nranges].last_mut() {
            let before = range_cost(last.pages);
            let grown = if pfn == last.end() {
                last.pages += pages;
                true
            } else if end == last.pfn {
                last.pfn = pfn;
                last.pages += pages;
                true
            } else {
                false
            };
            if grown {
                // A range never costs more than `RANGE_COST_MAX`, which was free when it began;
                // it holds fewer than 2^32 frames, as the collector does.
                self.bound = self.bound - before + range_cost(last.pages);
                self.pages += pages;
                return true;
            }
        }
        let limit = ranges.len().min(RANGES_PER_BUFFER);
        if self.nranges >= limit || self.bound + RANGE_COST_MAX > MAX_BUFFER_BYTES {
            return false;
        }
        ranges[self.nranges] = Range { pfn, pages };
        self.nranges += 1;
        self.bound += range_cost(pages);
        self.pages += pages;
        true
    }

    /// Sorts and merges the ranges and encodes them into `out` (at least [`MAX_BUFFER_BYTES`]
    /// long for the guarantee); returns what was written and the number of merged ranges, now at
    /// the start of `ranges`. The collector is empty afterwards.
    pub(crate) fn finish(&mut self, ranges: &mut [Range], out: &mut [u8]) -> (Encoded, usize) {
        let ranges = &mut ranges[..self.nranges];
        // Frames that came in descending order (pages popped from a stack): reversed, the sort
        // that follows has nothing left to do.
        if ranges.first().map(|r| r.pfn) > ranges.last().map(|r| r.pfn) {
            ranges.reverse();
        }
        let n = super::hint::coalesce(ranges, u64::from(u32::MAX));
        let enc = encode(&ranges[..n], out);
        *self = Self::new();
        (enc, n)
    }

    /// Forgets the frames collected.
    pub(crate) fn clear(&mut self) {
        *self = Self::new();
    }
}
