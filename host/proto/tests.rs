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
