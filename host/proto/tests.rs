use crate::proto::config::{Step, Target};
use crate::proto::pfn::{PfnArray, PushError, PFNS_PER_DESC};
use proptest::prelude::*;
use std::vec::Vec;

#[test]
fn pfn_array_is_le32_and_bounded() {
    let mut a = PfnArray::new();
    assert!(a.as_bytes().is_empty());
    a.push(0x1234_5678).unwrap();
    assert_eq!(a.as_bytes(), &[0x78, 0x56, 0x34, 0x12]);
    for i in 1..PFNS_PER_DESC {
        a.push(i as u64).unwrap();
    }
    assert!(a.is_full());
    assert_eq!(a.push(1), Err(PushError::Full));
    assert_eq!(a.as_bytes().len(), PFNS_PER_DESC * 4);
    a.clear();
    assert!(a.as_bytes().is_empty());
    assert_eq!(a.as_bytes().len(), 0);
}

#[test]
fn pfn_above_32_bits_is_refused() {
    let mut a = PfnArray::new();
    assert_eq!(a.push(1 << 32), Err(PushError::OutOfRange));
    assert_eq!(a.as_bytes().len(), 0);
    a.push(u32::MAX as u64).unwrap();
    assert_eq!(a.as_bytes().len(), 4);
}

#[test]
fn target_is_clamped_to_guest_memory() {
    assert_eq!(Target::check(10, 100), Target::Valid(10));
    assert_eq!(Target::check(100, 100), Target::Valid(100));
    assert_eq!(
        Target::check(101, 100),
        Target::Clamped {
            asked: 101,
            limit: 100
        }
    );
    assert_eq!(Target::check(u32::MAX, 1 << 40), Target::Valid(u32::MAX));
    assert_eq!(Target::check(7, 0).pages(), 0);
}

#[test]
fn steps_are_bounded_chunks() {
    assert_eq!(Step::towards(5, 5, 8), Step::Idle);
    assert_eq!(Step::towards(100, 0, 8), Step::Inflate(8));
    assert_eq!(Step::towards(3, 0, 8), Step::Inflate(3));
    assert_eq!(Step::towards(0, 100, 8), Step::Deflate(8));
    assert_eq!(Step::towards(98, 100, 8), Step::Deflate(2));
}

proptest! {
    #[test]
    fn pfn_array_round_trips(pfns in proptest::collection::vec(any::<u32>(), 0..=PFNS_PER_DESC)) {
        let mut a = PfnArray::new();
        for &p in &pfns {
            a.push(p as u64).unwrap();
        }
        let back: Vec<u32> = PfnArray::decode(a.as_bytes()).collect();
        prop_assert_eq!(back, pfns);
    }

    #[test]
    fn steps_reach_any_target(target in any::<u32>(), start in any::<u32>(), chunk in 1u32..100_000) {
        let mut cur = start;
        let mut steps = 0u64;
        loop {
            match Step::towards(target, cur, chunk) {
                Step::Idle => break,
                Step::Inflate(n) => { prop_assert!(n >= 1 && n <= chunk); cur += n; }
                Step::Deflate(n) => { prop_assert!(n >= 1 && n <= chunk); cur -= n; }
            }
            steps += 1;
            prop_assert!(steps <= (u32::MAX as u64) / chunk as u64 + 2);
        }
        prop_assert_eq!(cur, target);
    }

    #[test]
    fn target_never_exceeds_guest(num in any::<u32>(), guest in any::<u64>()) {
        let t = Target::check(num, guest);
        prop_assert!(u64::from(t.pages()) <= guest);
        prop_assert!(t.pages() <= num);
    }
}

mod hint {
    use crate::proto::hint::{
        coalesce, overtaken, sort, Action, Range, Rounds, CMD_ID_DONE, CMD_ID_STOP,
    };
    use proptest::prelude::*;
    use std::collections::BTreeSet;
    use std::vec::Vec;

    #[test]
    fn rounds_follow_the_host() {
        let mut r = Rounds::new();
        assert_eq!(r.on_command(CMD_ID_STOP), Action::Nothing);
        assert_eq!(r.on_command(0x8000_0000), Action::Start(0x8000_0000));
        // The same id again (another config field changed): the round goes on.
        assert_eq!(r.on_command(0x8000_0000), Action::Nothing);
        assert_eq!(r.on_command(CMD_ID_STOP), Action::End);
        // A finished round's id does not start it again.
        assert_eq!(r.on_command(0x8000_0000), Action::Nothing);
        assert_eq!(r.on_command(0x8000_0001), Action::Start(0x8000_0001));
        r.finish();
        assert_eq!(r.on_command(CMD_ID_STOP), Action::Nothing);
        assert_eq!(r.on_command(CMD_ID_DONE), Action::Done);
        // After DONE the next migration may reuse ids.
        assert_eq!(r.on_command(0x8000_0001), Action::Start(0x8000_0001));
        assert_eq!(r.on_command(0x8000_0002), Action::Start(0x8000_0002));
    }

    #[test]
    fn a_late_config_interrupt_does_not_end_the_round() {
        let id = 0x8000_0003;
        // QEMU shows the stop id while it applies the round's hints: not a reason to end it.
        assert!(!overtaken(id, CMD_ID_STOP));
        // Not yet seen by the host: the round's own id.
        assert!(!overtaken(id, id));
        // The next round's id, or DONE, end it.
        assert!(overtaken(id, id + 1));
        assert!(overtaken(id, CMD_ID_DONE));
        assert!(overtaken(id, 0x8000_0000));
    }

    fn frames(rs: &[Range]) -> BTreeSet<u64> {
        rs.iter().flat_map(|r| r.pfn..r.pfn + r.pages).collect()
    }

    #[test]
    fn adjacent_blocks_merge() {
        let mut v = [
            Range {
                pfn: 1024,
                pages: 1024,
            },
            Range {
                pfn: 0,
                pages: 1024,
            },
            Range {
                pfn: 4096,
                pages: 1,
            },
            Range {
                pfn: 2048,
                pages: 512,
            },
        ];
        let n = coalesce(&mut v, 1 << 18);
        assert_eq!(
            &v[..n],
            &[
                Range {
                    pfn: 0,
                    pages: 2560
                },
                Range {
                    pfn: 4096,
                    pages: 1
                }
            ]
        );
    }

    #[test]
    fn merged_ranges_respect_the_limit() {
        let mut v = [
            Range { pfn: 0, pages: 4 },
            Range { pfn: 4, pages: 4 },
            Range { pfn: 8, pages: 4 },
        ];
        let n = coalesce(&mut v, 6);
        // Touching blocks are never cut: each stays whole.
        assert_eq!(
            &v[..n],
            &[
                Range { pfn: 0, pages: 4 },
                Range { pfn: 4, pages: 4 },
                Range { pfn: 8, pages: 4 }
            ]
        );
        // A single page, then blocks of 4: the first range takes the page and one block.
        let mut v = [
            Range { pfn: 5, pages: 4 },
            Range { pfn: 0, pages: 1 },
            Range { pfn: 1, pages: 4 },
        ];
        let n = coalesce(&mut v, 6);
        assert_eq!(
            &v[..n],
            &[Range { pfn: 0, pages: 5 }, Range { pfn: 5, pages: 4 }]
        );
        // Overlapping ranges are split at the limit.
        let mut v = [Range { pfn: 0, pages: 5 }, Range { pfn: 3, pages: 6 }];
        let n = coalesce(&mut v, 6);
        assert_eq!(
            &v[..n],
            &[Range { pfn: 0, pages: 6 }, Range { pfn: 6, pages: 3 }]
        );
    }

    proptest! {
        #[test]
        fn coalesce_never_cuts_a_block(
            sizes in proptest::collection::vec(0u32..4, 1..64),
            max in 1u64..40,
        ) {
            // Disjoint blocks of 1, 2, 4 or 8 pages laid end to end, some with gaps.
            let mut v = Vec::new();
            let mut pfn = 0u64;
            for (i, o) in sizes.iter().enumerate() {
                let pages = 1u64 << o;
                v.push(Range { pfn, pages });
                pfn += pages + u64::from(i % 5 == 4);
            }
            let starts: BTreeSet<u64> = v.iter().map(|r| r.pfn).collect();
            let ends: BTreeSet<u64> = v.iter().map(|r| r.end()).collect();
            v.reverse();
            let n = coalesce(&mut v, max);
            for r in &v[..n] {
                prop_assert!(starts.contains(&r.pfn));
                prop_assert!(ends.contains(&r.end()));
            }
        }
    }

    #[test]
    fn sort_orders_a_full_record_buffer() {
        // 4096 single pages every other frame, in a scrambled order (as a free list holds them).
        let mut v: Vec<Range> = (0..4096u64)
            .map(|i| Range {
                pfn: ((i * 2749) % 4096) * 2,
                pages: 1,
            })
            .collect();
        sort(&mut v);
        for (i, r) in v.iter().enumerate() {
            assert_eq!(r.pfn, 2 * i as u64);
        }
    }

    proptest! {
        #[test]
        fn sort_is_an_ordered_permutation(
            input in proptest::collection::vec((0u64..1 << 20, 0u64..4), 0..2000),
        ) {
            let mut v: Vec<Range> = input.iter().map(|&(pfn, pages)| Range { pfn, pages }).collect();
            let mut expect = v.clone();
            expect.sort();
            sort(&mut v);
            prop_assert_eq!(v, expect);
        }

        #[test]
        fn coalesce_keeps_exactly_the_frames(
            input in proptest::collection::vec((0u64..4096, 0u64..64), 0..64),
            max in 1u64..200,
        ) {
            let mut v: Vec<Range> = input.iter().map(|&(pfn, pages)| Range { pfn, pages }).collect();
            let before = frames(&v);
            let n = coalesce(&mut v, max);
            let out = &v[..n];
            prop_assert_eq!(frames(out), before);
            for w in out.windows(2) {
                // Sorted and disjoint.
                prop_assert!(w[0].end() <= w[1].pfn);
            }
            for r in out {
                prop_assert!(r.pages > 0);
                let longest_input = input.iter().map(|&(_, p)| p).max().unwrap_or(0);
                prop_assert!(r.pages <= max.max(longest_input));
            }
        }
    }
}

mod stats {
    use crate::proto::stats::{StatsBuf, ENTRY_BYTES, MEMTOT, NR_TAGS, SWAP_IN};
    use proptest::prelude::*;

    /// Decodes a little-endian statistics buffer as a device does: whole entries only, a
    /// trailing partial entry is ignored.
    fn decode_le(bytes: &[u8]) -> impl Iterator<Item = (u16, u64)> + '_ {
        bytes.chunks_exact(ENTRY_BYTES).map(|e| {
            let mut v = [0u8; 8];
            v.copy_from_slice(&e[2..]);
            (u16::from_le_bytes([e[0], e[1]]), u64::from_le_bytes(v))
        })
    }

    #[test]
    fn entries_are_packed_le() {
        let mut b = StatsBuf::new();
        assert!(b.push(MEMTOT, 0x0102_0304_0506_0708, true));
        assert_eq!(b.as_bytes(), &[5, 0, 8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(decode_le(b.as_bytes()).count(), 1);
    }

    #[test]
    fn buffer_holds_every_tag_and_no_more() {
        let mut b = StatsBuf::new();
        for tag in 0..NR_TAGS as u16 {
            assert!(b.push(tag, u64::from(tag), true));
        }
        assert!(!b.push(SWAP_IN, 1, true));
        assert_eq!(b.as_bytes().len(), NR_TAGS * ENTRY_BYTES);
        b.clear();
        assert!(b.as_bytes().is_empty());
    }

    proptest! {
        #[test]
        fn decode_gives_back_what_was_pushed(v in proptest::collection::vec((0u16..16, any::<u64>()), 0..=16)) {
            let mut b = StatsBuf::new();
            for &(t, x) in &v {
                prop_assert!(b.push(t, x, true));
            }
            let back: std::vec::Vec<_> = decode_le(b.as_bytes()).collect();
            prop_assert_eq!(back, v);
        }

        #[test]
        fn decode_ignores_a_partial_entry(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            prop_assert_eq!(decode_le(&bytes).count(), bytes.len() / ENTRY_BYTES);
        }
    }
}

mod records {
    use crate::proto::hint::Range;
    use crate::proto::records::{
        decode, encode, DecodeError, Summary, MAX_BITMAP_BITS, MAX_BUFFER_BYTES, OVERHEAD_BYTES,
        TYPE_BITMAP, TYPE_LIST, TYPE_RUN,
    };
    use proptest::prelude::*;
    use std::vec::Vec;

    /// Sorted, disjoint, non-adjacent ranges from (gap, length) pairs.
    fn ranges_from(start: u64, steps: &[(u64, u64)]) -> Vec<Range> {
        let mut at = start;
        let mut out: Vec<Range> = Vec::new();
        for &(gap, len) in steps {
            at += gap + 1;
            out.push(Range {
                pfn: at,
                pages: len,
            });
            at += len;
        }
        out
    }

    /// Encodes everything into as many buffers as it takes.
    fn encode_all(ranges: &[Range]) -> Vec<Vec<u8>> {
        let mut bufs = Vec::new();
        let mut rest = ranges;
        while !rest.is_empty() {
            let mut b = std::vec![0u8; MAX_BUFFER_BYTES];
            let e = encode(rest, &mut b);
            assert!(e.ranges > 0 && e.bytes > 0, "no progress");
            b.truncate(e.bytes);
            bufs.push(b);
            rest = &rest[e.ranges..];
        }
        bufs
    }

    fn decode_all(bufs: &[Vec<u8>], limit: u64) -> Vec<Range> {
        let mut out: Vec<Range> = Vec::new();
        for b in bufs {
            decode(b, limit, |r| match out.last_mut() {
                Some(l) if l.end() == r.pfn => l.pages += r.pages,
                _ => out.push(r),
            })
            .expect("own encoding rejected");
        }
        out
    }

    fn header(nr: u16) -> Vec<u8> {
        let mut b = std::vec![1u8, 0];
        b.extend_from_slice(&nr.to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        b
    }

    fn record(b: &mut Vec<u8>, ty: u8, count: u32, pfn: u64) {
        b.push(ty);
        b.extend_from_slice(&[0; 3]);
        b.extend_from_slice(&count.to_le_bytes());
        b.extend_from_slice(&pfn.to_le_bytes());
    }

    fn ranges_of(b: &[u8], limit: u64) -> Result<Vec<Range>, DecodeError> {
        let mut out = Vec::new();
        decode(b, limit, |r| out.push(r)).map(|_| out)
    }

    #[test]
    fn long_runs_are_runs_dense_pages_a_bitmap_sparse_pages_a_list() {
        // One 4 MiB run, then every other page of 256 pages, then 10 pages 1000 frames apart.
        let mut r = std::vec![Range {
            pfn: 1 << 20,
            pages: 1024
        }];
        r.extend(ranges_from((1 << 20) + 2048, &[(1, 1); 128]));
        r.extend(ranges_from(1 << 24, &[(999, 1); 10]));
        let bufs = encode_all(&r);
        assert_eq!(bufs.len(), 1);
        let mut b = std::vec![0u8; MAX_BUFFER_BYTES];
        let e = encode(&r, &mut b);
        assert_eq!((e.runs, e.bitmaps, e.lists), (1, 1, 1), "{e:?}");
        assert_eq!(decode_all(&bufs, u64::MAX), r);
    }

    #[test]
    fn hostile_buffers_are_rejected() {
        let limit = 1 << 20;
        let mut ok = header(1);
        record(&mut ok, TYPE_RUN, 4, 100);
        assert_eq!(
            ranges_of(&ok, limit),
            Ok(std::vec![Range { pfn: 100, pages: 4 }])
        );
        let cases: Vec<(&str, Vec<u8>, DecodeError)> = std::vec![
            ("empty", Vec::new(), DecodeError::Truncated),
            ("short header", ok[..5].to_vec(), DecodeError::Truncated),
            (
                "truncated record",
                ok[..20].to_vec(),
                DecodeError::Truncated
            ),
            (
                "version",
                {
                    let mut b = ok.clone();
                    b[0] = 2;
                    b
                },
                DecodeError::Version
            ),
            (
                "reserved header",
                {
                    let mut b = ok.clone();
                    b[5] = 1;
                    b
                },
                DecodeError::Reserved
            ),
            (
                "reserved record",
                {
                    let mut b = ok.clone();
                    b[9] = 1;
                    b
                },
                DecodeError::Reserved
            ),
            (
                "type",
                {
                    let mut b = ok.clone();
                    b[8] = 9;
                    b
                },
                DecodeError::Type
            ),
            (
                "count zero",
                {
                    let mut b = header(1);
                    record(&mut b, TYPE_RUN, 0, 1);
                    b
                },
                DecodeError::Count
            ),
            (
                "overflow",
                {
                    let mut b = header(1);
                    record(&mut b, TYPE_RUN, 2, u64::MAX);
                    b
                },
                DecodeError::Overflow
            ),
            (
                "beyond memory",
                {
                    let mut b = header(1);
                    record(&mut b, TYPE_RUN, 2, limit - 1);
                    b
                },
                DecodeError::Beyond
            ),
            (
                "overlap",
                {
                    let mut b = header(2);
                    record(&mut b, TYPE_RUN, 4, 100);
                    record(&mut b, TYPE_RUN, 4, 103);
                    b
                },
                DecodeError::Order
            ),
            (
                "descending",
                {
                    let mut b = header(2);
                    record(&mut b, TYPE_RUN, 4, 100);
                    record(&mut b, TYPE_RUN, 4, 10);
                    b
                },
                DecodeError::Order
            ),
            (
                "bitmap too long",
                {
                    let mut b = header(1);
                    record(&mut b, TYPE_BITMAP, MAX_BITMAP_BITS + 1, 0);
                    b.resize(b.len() + (MAX_BITMAP_BITS as usize + 64) / 8, 0);
                    b
                },
                DecodeError::Count
            ),
            (
                "bitmap tail",
                {
                    let mut b = header(1);
                    record(&mut b, TYPE_BITMAP, 3, 0);
                    b.extend_from_slice(&0b1001u64.to_le_bytes());
                    b
                },
                DecodeError::BitmapTail
            ),
            (
                "bitmap truncated",
                {
                    let mut b = header(1);
                    record(&mut b, TYPE_BITMAP, 65, 0);
                    b.extend_from_slice(&1u64.to_le_bytes());
                    b
                },
                DecodeError::Truncated
            ),
            (
                "list not ascending",
                {
                    let mut b = header(1);
                    record(&mut b, TYPE_LIST, 2, 0);
                    b.extend_from_slice(&5u32.to_le_bytes());
                    b.extend_from_slice(&5u32.to_le_bytes());
                    b
                },
                DecodeError::Order
            ),
            (
                "list padding",
                {
                    let mut b = header(1);
                    record(&mut b, TYPE_LIST, 1, 0);
                    b.extend_from_slice(&5u32.to_le_bytes());
                    b.extend_from_slice(&1u32.to_le_bytes());
                    b
                },
                DecodeError::Reserved
            ),
            (
                "list offset overflow",
                {
                    let mut b = header(1);
                    record(&mut b, TYPE_LIST, 1, u64::MAX - 2);
                    b.extend_from_slice(&7u32.to_le_bytes());
                    b.extend_from_slice(&[0; 4]);
                    b
                },
                DecodeError::Overflow
            ),
            (
                "list huge count",
                {
                    let mut b = header(1);
                    record(&mut b, TYPE_LIST, u32::MAX, 0);
                    b
                },
                DecodeError::Truncated
            ),
            (
                "fewer records",
                {
                    let mut b = header(2);
                    record(&mut b, TYPE_RUN, 4, 100);
                    b
                },
                DecodeError::Truncated
            ),
            (
                "trailing",
                {
                    let mut b = ok.clone();
                    b.extend_from_slice(&[0; 8]);
                    b
                },
                DecodeError::Trailing
            ),
        ];
        for (name, b, want) in cases {
            let mut seen = 0;
            let got = decode(&b, limit, |_| seen += 1);
            assert_eq!(got, Err(want), "{name}");
            assert_eq!(seen, 0, "{name}: ranges handed out from a rejected buffer");
        }
    }

    fn steps() -> impl Strategy<Value = Vec<(u64, u64)>> {
        // Gaps from adjacent-but-one to far apart, lengths from single pages to long runs.
        proptest::collection::vec(
            (
                prop_oneof![0u64..4, 0u64..200, 0u64..100_000],
                prop_oneof![1u64..4, 1u64..20, 1u64..5000],
            ),
            1..800,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn encode_then_decode_gives_the_same_pages(start in 0u64..(1 << 31), s in steps()) {
            let r = ranges_from(start, &s);
            prop_assume!(r.last().is_some_and(|l| l.end() < 1 << 32));
            let bufs = encode_all(&r);
            prop_assert_eq!(decode_all(&bufs, 1 << 32), r);
        }

        #[test]
        fn never_larger_than_the_standard_format_plus_a_constant(start in 0u64..(1 << 31), s in steps()) {
            let r = ranges_from(start, &s);
            prop_assume!(r.last().is_some_and(|l| l.end() < 1 << 32));
            let bufs = encode_all(&r);
            let pages: u64 = r.iter().map(|x| x.pages).sum();
            let bytes: usize = bufs.iter().map(Vec::len).sum();
            prop_assert!(
                bytes <= pages as usize * 4 + OVERHEAD_BYTES * bufs.len(),
                "{} bytes in {} buffers for {} pages", bytes, bufs.len(), pages
            );
        }

        #[test]
        fn mutated_buffers_never_yield_bad_ranges(s in steps(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6), cut in any::<usize>()) {
            let r = ranges_from(0, &s);
            let limit = r.last().map_or(1, |l| l.end());
            let mut b = encode_all(&r).swap_remove(0);
            for (at, v) in flips {
                let n = b.len();
                b[at % n] ^= v;
            }
            if cut % 4 == 0 {
                b.truncate(cut % (b.len() + 1));
            }
            let mut got: Vec<Range> = Vec::new();
            if let Ok(sum) = decode(&b, limit, |x| got.push(x)) {
                // Whatever is accepted is well formed: ascending, disjoint, below the limit.
                for w in got.windows(2) {
                    prop_assert!(w[0].end() <= w[1].pfn);
                }
                prop_assert!(got.iter().all(|x| x.pages > 0 && x.end() <= limit));
                let pages: u64 = got.iter().map(|x| x.pages).sum();
                let Summary { pages: claimed, .. } = sum;
                prop_assert_eq!(pages, claimed);
            }
        }

        #[test]
        fn small_buffers_make_progress(s in steps(), size in 40usize..200) {
            let r: Vec<Range> = ranges_from(0, &s).into_iter().filter(|x| x.pages < 30).collect();
            let mut rest = &r[..];
            while !rest.is_empty() {
                let mut b = std::vec![0u8; size];
                let e = encode(rest, &mut b);
                prop_assert!(e.ranges > 0, "stuck with {} bytes", size);
                let ok = decode(&b[..e.bytes], u64::MAX, |_| {}).is_ok();
                prop_assert!(ok, "own encoding rejected");
                rest = &rest[e.ranges..];
            }
        }
    }
}

/// The page-record collector: every frame arrives once, and it never overflows a buffer.
mod collector {
    use crate::proto::hint::Range;
    use crate::proto::records::{decode, Collector, MAX_BUFFER_BYTES, RANGES_PER_BUFFER};
    use proptest::prelude::*;
    use std::{collections::BTreeSet, vec::Vec};

    /// Collects `frames` (distinct) into as many buffers as it takes, then decodes them all.
    fn roundtrip(frames: &[u64]) -> (Vec<u64>, usize) {
        let mut ranges = std::vec![Range { pfn: 0, pages: 0 }; RANGES_PER_BUFFER];
        let mut got = Vec::new();
        let mut buffers = 0;
        let mut c = Collector::new();
        let flush = |c: &mut Collector, ranges: &mut Vec<Range>, got: &mut Vec<u64>| {
            let pages = c.pages();
            let mut out = std::vec![0u8; MAX_BUFFER_BYTES];
            let (enc, n) = c.finish(ranges, &mut out);
            assert_eq!(enc.ranges, n, "a collected range was not encoded");
            assert!(enc.bytes <= MAX_BUFFER_BYTES);
            let sum = decode(&out[..enc.bytes], u64::MAX, |r| {
                got.extend(r.pfn..r.end());
            })
            .expect("own encoding rejected");
            assert_eq!(sum.pages, pages);
            assert_eq!(c.pages(), 0);
        };
        for &f in frames {
            if !c.push(&mut ranges, f) {
                flush(&mut c, &mut ranges, &mut got);
                buffers += 1;
                assert!(c.push(&mut ranges, f), "an empty collector refused a frame");
            }
        }
        if c.pages() > 0 {
            flush(&mut c, &mut ranges, &mut got);
            buffers += 1;
        }
        got.sort_unstable();
        (got, buffers)
    }

    proptest! {
        #[test]
        fn every_frame_arrives_once(set in prop::collection::btree_set(0u64..200_000, 0..6000),
                                    seed in any::<u64>()) {
            // In a scrambled order, as pages leave a stack.
            let mut frames: Vec<u64> = set.iter().copied().collect();
            let n = frames.len();
            let mut x = seed | 1;
            for i in (1..n).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                frames.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let (got, _) = roundtrip(&frames);
            prop_assert_eq!(got, set.into_iter().collect::<Vec<_>>());
        }

        #[test]
        fn blocks_fill_few_buffers(blocks in prop::collection::btree_set(0u64..100_000, 1..400),
                                   down in any::<bool>()) {
            // 2 MiB blocks, their frames pushed up (inflate) or down (deflate pops a stack).
            let mut frames = Vec::new();
            for b in &blocks {
                let base = b * 512;
                if down {
                    frames.extend((base..base + 512).rev());
                } else {
                    frames.extend(base..base + 512);
                }
            }
            let (got, buffers) = roundtrip(&frames);
            prop_assert_eq!(got.len(), frames.len());
            prop_assert_eq!(buffers, 1);
        }
    }

    proptest! {
        #[test]
        fn ranges_and_frames_arrive_once(
            runs in prop::collection::btree_map(0u64..4000, 1u64..600, 1..300),
            seed in any::<u64>(),
        ) {
            // Disjoint runs (whole blocks or single pages, as the balloon takes them), pushed in
            // a scrambled order; a run the collector refuses goes into the next buffer.
            let mut items: Vec<(u64, u64)> = Vec::new();
            let mut next_free = 0u64;
            for (&start, &len) in &runs {
                let pfn = (start * 1024).max(next_free);
                items.push((pfn, len));
                next_free = pfn + len;
            }
            let mut x = seed | 1;
            for i in (1..items.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                items.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let mut ranges = std::vec![Range { pfn: 0, pages: 0 }; RANGES_PER_BUFFER];
            let mut c = Collector::new();
            let mut got = Vec::new();
            let mut out = std::vec![0u8; MAX_BUFFER_BYTES];
            let mut flush = |c: &mut Collector, ranges: &mut Vec<Range>, got: &mut Vec<u64>| {
                let pages = c.pages();
                let (enc, n) = c.finish(ranges, &mut out);
                assert_eq!(enc.ranges, n, "a collected range was not encoded");
                let sum = decode(&out[..enc.bytes], u64::MAX, |r| got.extend(r.pfn..r.end()))
                    .expect("own encoding rejected");
                assert_eq!(sum.pages, pages);
            };
            for &(pfn, len) in &items {
                if !c.push_range(&mut ranges, pfn, len) {
                    flush(&mut c, &mut ranges, &mut got);
                    prop_assert!(c.push_range(&mut ranges, pfn, len), "an empty collector refused");
                }
            }
            if c.pages() > 0 {
                flush(&mut c, &mut ranges, &mut got);
            }
            got.sort_unstable();
            let want: Vec<u64> = items.iter().flat_map(|&(p, l)| p..p + l).collect::<BTreeSet<_>>()
                .into_iter().collect();
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn push_range_refuses_what_it_cannot_hold() {
        let mut ranges = std::vec![Range { pfn: 0, pages: 0 }; RANGES_PER_BUFFER];
        let mut c = Collector::new();
        assert!(
            !c.push_range(&mut ranges, 10, 0),
            "an empty range was taken"
        );
        assert!(
            !c.push_range(&mut ranges, u64::MAX - 1, 4),
            "a range past the last frame"
        );
        assert!(c.push_range(&mut ranges, 0, u64::from(u32::MAX) - 1));
        // 2^32 - 1 frames at most, even where the range would merge.
        assert!(!c.push_range(&mut ranges, u64::from(u32::MAX) - 1, 2));
        assert!(c.push_range(&mut ranges, u64::from(u32::MAX) - 1, 1));
        assert!(!c.push(&mut ranges, 1 << 40));
        assert_eq!(c.pages(), u64::from(u32::MAX));
    }

    #[test]
    fn refuses_before_overflow() {
        // Frames two apart: every one a range of its own, the costliest case per frame.
        let mut ranges = std::vec![Range { pfn: 0, pages: 0 }; RANGES_PER_BUFFER];
        let mut c = Collector::new();
        let mut n = 0u64;
        while c.push(&mut ranges, 2 * n) {
            n += 1;
        }
        assert!(n as usize <= RANGES_PER_BUFFER);
        // More than the standard format's 256 frames a buffer.
        assert!(n > 1000, "only {n} frames");
        let mut out = std::vec![0u8; MAX_BUFFER_BYTES];
        let (enc, merged) = c.finish(&mut ranges, &mut out);
        assert_eq!(enc.ranges, merged);
        let mut seen = BTreeSet::new();
        decode(&out[..enc.bytes], u64::MAX, |r| {
            seen.extend(r.pfn..r.end());
        })
        .unwrap();
        assert_eq!(seen.len() as u64, n);
    }
}

/// The golden vectors in `tests/vectors/`: byte files that both these tests and our QEMU's parser
/// test decode. `NAME.bin` is a buffer; `NAME.ranges` lists the ranges it decodes to (`pfn pages`
/// per line, with the limit on the first line as `limit N`), or `NAME.err` names the error it
/// must be rejected with. `VBRS_WRITE_VECTORS=1 cargo test` writes them again.
mod vectors {
    use crate::proto::hint::Range;
    use crate::proto::records::{decode, encode, MAX_BUFFER_BYTES};
    use std::{format, fs, path::PathBuf, string::String, vec::Vec};

    const LIMIT: u64 = 1 << 22;

    fn dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors")
    }

    fn enc(r: &[Range]) -> Vec<u8> {
        let mut b = std::vec![0u8; MAX_BUFFER_BYTES];
        let e = encode(r, &mut b);
        assert_eq!(e.ranges, r.len());
        b.truncate(e.bytes);
        b
    }

    fn raw(nr: u16, recs: &[(u8, u32, u64, &[u8])]) -> Vec<u8> {
        let mut b = std::vec![1u8, 0];
        b.extend_from_slice(&nr.to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        for (ty, count, pfn, payload) in recs {
            b.push(*ty);
            b.extend_from_slice(&[0; 3]);
            b.extend_from_slice(&count.to_le_bytes());
            b.extend_from_slice(&pfn.to_le_bytes());
            b.extend_from_slice(payload);
        }
        b
    }

    fn r(pfn: u64, pages: u64) -> Range {
        Range { pfn, pages }
    }

    /// The vectors: valid ones from the encoder, hostile ones by hand.
    fn all() -> Vec<(&'static str, Vec<u8>)> {
        let every_other: Vec<Range> = (0..300).map(|i| r(0x1000 + 2 * i, 1)).collect();
        let sparse: Vec<Range> = (0..40).map(|i| r(0x20000 + 977 * i, 1 + i % 3)).collect();
        let mut mixed = std::vec![r(0x100, 512)];
        mixed.extend((0..64).map(|i| r(0x400 + 3 * i, 2)));
        mixed.extend((0..12).map(|i| r(0x9000 + 5000 * i, 1)));
        mixed.push(r(0x3f_0000, 0x1_0000));
        std::vec![
            ("run-single", enc(&[r(0x1234, 1)])),
            ("run-2mib", enc(&[r(0x200, 512)])),
            ("bitmap-every-other", enc(&every_other)),
            ("list-sparse", enc(&sparse)),
            ("mixed", enc(&mixed)),
            ("bad-version", {
                let mut b = enc(&[r(1, 16)]);
                b[0] = 2;
                b
            }),
            ("bad-truncated", {
                let b = enc(&every_other);
                b[..b.len() - 3].to_vec()
            }),
            (
                "bad-overlap",
                raw(2, &[(1, 16, 100, &[]), (1, 16, 110, &[])])
            ),
            ("bad-beyond", raw(1, &[(1, 16, LIMIT - 8, &[])])),
            ("bad-overflow", raw(1, &[(1, 16, u64::MAX - 8, &[])])),
            ("bad-count-zero", raw(1, &[(1, 0, 100, &[])])),
            (
                "bad-bitmap-tail",
                raw(1, &[(2, 4, 100, &0x11u64.to_le_bytes())])
            ),
            (
                "bad-list-order",
                raw(1, &[(3, 2, 100, &[3, 0, 0, 0, 2, 0, 0, 0])])
            ),
            ("bad-type", raw(1, &[(7, 1, 100, &[])])),
            // A header alone names nothing and is accepted.
            ("empty", raw(0, &[])),
            ("bad-reserved-header", {
                let mut b = raw(1, &[(1, 16, 100, &[])]);
                b[1] = 1;
                b
            }),
            ("bad-reserved-record", {
                let mut b = raw(1, &[(1, 16, 100, &[])]);
                b[8 + 2] = 1;
                b
            }),
            (
                "bad-reserved-pad",
                raw(1, &[(3, 1, 100, &[4, 0, 0, 0, 0, 1, 0, 0])])
            ),
            ("bad-bitmap-count", {
                let words = std::vec![0u8; 32769usize.div_ceil(64) * 8];
                raw(1, &[(2, 32769, 100, &words)])
            }),
            (
                "bad-list-overflow",
                raw(1, &[(3, 1, u64::MAX - 2, &[5, 0, 0, 0, 0, 0, 0, 0])])
            ),
            // Only the first frame is named, but the bitmap's span passes the limit.
            (
                "bad-bitmap-span",
                raw(1, &[(2, 64, LIMIT - 32, &1u64.to_le_bytes())])
            ),
            ("bad-trailing", {
                let mut b = enc(&[r(1, 16)]);
                b.extend_from_slice(&[0; 8]);
                b
            }),
        ]
    }

    fn expected(b: &[u8]) -> String {
        let mut out = Vec::new();
        match decode(b, LIMIT, |x| out.push(x)) {
            Ok(_) => {
                let mut s = format!("limit {LIMIT}\n");
                for x in out {
                    s += &format!("{} {}\n", x.pfn, x.pages);
                }
                s
            }
            Err(e) => format!("{e:?}\n"),
        }
    }

    #[test]
    fn golden_vectors_decode_as_recorded() {
        let write = std::env::var_os("VBRS_WRITE_VECTORS").is_some();
        for (name, bytes) in all() {
            let bad = name.starts_with("bad-");
            let want = expected(&bytes);
            assert_eq!(bad, !want.starts_with("limit"), "{name}: {want}");
            let bin = dir().join(format!("{name}.bin"));
            let txt = dir().join(format!("{name}.{}", if bad { "err" } else { "ranges" }));
            if write {
                fs::create_dir_all(dir()).unwrap();
                fs::write(&bin, &bytes).unwrap();
                fs::write(&txt, &want).unwrap();
            }
            let on_disk = fs::read(&bin).unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
            assert_eq!(on_disk, bytes, "{name}: the vector changed");
            let recorded = fs::read_to_string(&txt).unwrap();
            assert_eq!(expected(&on_disk), recorded, "{name}");
        }
    }
}
