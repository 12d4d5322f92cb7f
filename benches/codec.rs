//! What the open codec costs: the built-in MessagePack codec behind `&dyn Codec` against
//! `rmp-serde` called directly, and a user's codec (the same format through `erased-serde`)
//! beside them, on encode and decode, in time and in allocations.
//!
//! - `raw_rmp_decode_ns` / `dyn_codec_decode_ns` / `erased_codec_decode_ns`: decoding one
//!   small record (`_small`) and a list of 100 (`_list`, about 6.7 KiB);
//! - the same for `_encode_`;
//! - `*_decode_allocs`: allocations per decode of the list, counted by a wrapping global
//!   allocator.
//!
//! No Redis: this is the codec alone, the part of an L2 hit or a store that changed.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{figure, figure1, ns_per_iter, repeat};
use serde::{Deserialize, Serialize};
use stormcache::{Codec, CodecExt, Decoder, Encodable, Error, MessagePack};

struct Counting;
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator and only counts.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Account {
    id: u64,
    email: String,
    groups: Vec<String>,
    active: bool,
}

fn accounts(n: u64) -> Vec<Account> {
    (0..n)
        .map(|id| Account {
            id,
            email: format!("user{id}@example.com"),
            groups: vec!["staff".into(), "readers".into(), format!("team-{}", id % 7)],
            active: id % 3 != 0,
        })
        .collect()
}

/// MessagePack again, as a user would write it: through the erased path.
#[derive(Debug)]
struct UserMessagePack;

impl Codec for UserMessagePack {
    fn id(&self) -> u8 {
        200
    }
    fn name(&self) -> &str {
        "user-messagepack"
    }
    fn encode(&self, value: Encodable<'_>, out: &mut Vec<u8>) -> Result<(), Error> {
        let mut ser = rmp_serde::Serializer::new(out).with_struct_map();
        value
            .serialize(&mut ser)
            .map_err(|e| Error::Encode(e.to_string()))
    }
    fn decode(&self, bytes: &[u8], into: Decoder<'_>) -> Result<(), Error> {
        into.deserialize_from(&mut rmp_serde::Deserializer::from_read_ref(bytes))
    }
}

const RUNS: usize = 5;

fn main() {
    let dynamic: &dyn Codec = black_box(&MessagePack);
    let user: &dyn Codec = black_box(&UserMessagePack);
    for (label, value, iters) in [
        ("small", accounts(1), 200_000),
        ("list", accounts(100), 2_000),
    ] {
        let bytes = rmp_serde::to_vec_named(&value).expect("encodes");
        assert_eq!(dynamic.to_vec(&value).expect("encodes"), bytes);
        assert_eq!(user.to_vec(&value).expect("encodes"), bytes);
        let raw = repeat(RUNS, || {
            ns_per_iter(iters, |_| {
                let v: Vec<Account> = rmp_serde::from_slice(black_box(&bytes)).expect("decodes");
                black_box(v);
            })
        });
        let dyn_ = repeat(RUNS, || {
            ns_per_iter(iters, |_| {
                let v: Vec<Account> = dynamic.from_slice(black_box(&bytes)).expect("decodes");
                black_box(v);
            })
        });
        let erased = repeat(RUNS, || {
            ns_per_iter(iters, |_| {
                let v: Vec<Account> = user.from_slice(black_box(&bytes)).expect("decodes");
                black_box(v);
            })
        });
        figure(&format!("raw_rmp_decode_{label}_ns"), raw, "ns");
        figure(&format!("dyn_codec_decode_{label}_ns"), dyn_, "ns");
        figure(&format!("erased_codec_decode_{label}_ns"), erased, "ns");
        figure1(
            &format!("dyn_codec_decode_{label}_vs_raw"),
            dyn_.median / raw.median,
            "x",
        );
        let raw = repeat(RUNS, || {
            ns_per_iter(iters, |_| {
                black_box(rmp_serde::to_vec_named(black_box(&value)).expect("encodes"));
            })
        });
        let dyn_ = repeat(RUNS, || {
            ns_per_iter(iters, |_| {
                black_box(dynamic.to_vec(black_box(&value)).expect("encodes"));
            })
        });
        let erased = repeat(RUNS, || {
            ns_per_iter(iters, |_| {
                black_box(user.to_vec(black_box(&value)).expect("encodes"));
            })
        });
        figure(&format!("raw_rmp_encode_{label}_ns"), raw, "ns");
        figure(&format!("dyn_codec_encode_{label}_ns"), dyn_, "ns");
        figure(&format!("erased_codec_encode_{label}_ns"), erased, "ns");
        figure1(
            &format!("dyn_codec_encode_{label}_vs_raw"),
            dyn_.median / raw.median,
            "x",
        );
    }
    let bytes = rmp_serde::to_vec_named(&accounts(100)).expect("encodes");
    let allocs = |f: &dyn Fn() -> Vec<Account>| {
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        black_box(f());
        (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64
    };
    figure1(
        "raw_rmp_decode_allocs",
        allocs(&|| rmp_serde::from_slice(&bytes).expect("decodes")),
        "allocations",
    );
    figure1(
        "dyn_codec_decode_allocs",
        allocs(&|| dynamic.from_slice(&bytes).expect("decodes")),
        "allocations",
    );
    figure1(
        "erased_codec_decode_allocs",
        allocs(&|| user.from_slice(&bytes).expect("decodes")),
        "allocations",
    );
}
