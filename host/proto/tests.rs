use crate::proto::config::{Step, Target};
use crate::proto::pfn::{PfnArray, PushError, PFNS_PER_DESC};
use proptest::prelude::*;
use std::vec::Vec;

#[test]
fn pfn_array_is_le32_and_bounded() {
    let mut a = PfnArray::new();
    assert!(a.is_empty());
    a.push(0x1234_5678).unwrap();
    assert_eq!(a.as_bytes(), &[0x78, 0x56, 0x34, 0x12]);
    for i in 1..PFNS_PER_DESC {
        a.push(i as u64).unwrap();
    }
    assert!(a.is_full());
    assert_eq!(a.push(1), Err(PushError::Full));
    assert_eq!(a.as_bytes().len(), PFNS_PER_DESC * 4);
    a.clear();
    assert!(a.is_empty());
    assert_eq!(a.as_bytes().len(), 0);
}

#[test]
fn pfn_above_32_bits_is_refused() {
    let mut a = PfnArray::new();
    assert_eq!(a.push(1 << 32), Err(PushError::OutOfRange));
    assert_eq!(a.len(), 0);
    a.push(u32::MAX as u64).unwrap();
    assert_eq!(a.len(), 1);
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
    use crate::proto::hint::{coalesce, Action, Range, Rounds, CMD_ID_DONE, CMD_ID_STOP};
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
        assert_eq!(
            &v[..n],
            &[Range { pfn: 0, pages: 6 }, Range { pfn: 6, pages: 6 }]
        );
    }

    proptest! {
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
