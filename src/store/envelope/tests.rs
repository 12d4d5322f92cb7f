use super::*;
use crate::store::codec::{CodecExt, MessagePack};

fn at() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)
}

fn sealed(value: &impl serde::Serialize, compress_above: Option<usize>) -> Sealed {
    seal(
        &MessagePack,
        at(),
        Encodable::new(value),
        compress_above,
        &[],
        &Lineage::Unrecorded,
    )
    .expect("encodes")
}

/// A value LZ4 shrinks well: a JSON-ish list of similar records, about 10 KiB packed.
fn big() -> Vec<(String, u32, String)> {
    (0..200)
        .map(|i| (format!("user-{i}"), i, "member of staff, reads".to_owned()))
        .collect()
}

/// [`big`] sealed compressed with `tags` and `lineage`: its flags byte and the sections it
/// opens with, once its payload has decoded back to [`big`].
#[cfg(feature = "compression")]
fn compressed_with(tags: &[Key], lineage: &Lineage) -> (u8, Vec<Key>, Lineage) {
    let sealed = seal(
        &MessagePack,
        at(),
        Encodable::new(&big()),
        Some(64),
        tags,
        lineage,
    )
    .expect("encodes");
    let opened = open(&MessagePack, &sealed.bytes).expect("opens");
    let back: Vec<(String, u32, String)> =
        MessagePack.from_slice(&opened.payload).expect("decodes");
    assert_eq!(back, big());
    (sealed.bytes[4], opened.tags, opened.lineage)
}

#[test]
fn tombstones_are_unique_and_never_open_as_values() {
    let (a, b) = (tombstone(), tombstone());
    assert_ne!(a, b);
    assert!(is_tombstone(&a) && is_tombstone(&b));
    assert!(open(&MessagePack, &a).is_err());
}

#[test]
fn v1_round_trip_and_rejections() {
    let s = sealed(&"abc", None);
    let payload = MessagePack.to_vec(&"abc").expect("encodes");
    assert_eq!(s.encoded_len, payload.len());
    assert_eq!(&s.bytes[..4], [b'S', b'C', V1, MessagePack.id()]);
    assert_eq!(s.bytes[HEADER_LEN..], payload[..]);
    let opened = open(&MessagePack, &s.bytes).expect("our envelope");
    assert_eq!(opened.fresh_until, at());
    assert!(matches!(opened.payload, Cow::Borrowed(p) if p == payload));
    assert!(open(&MessagePack, b"garbage").is_err());
    assert!(open(&MessagePack, &s.bytes[..5]).is_err());
    let mut other_version = s.bytes.clone();
    other_version[2] = 9;
    assert!(open(&MessagePack, &other_version).is_err());
    let mut other_codec = s.bytes.clone();
    other_codec[3] = 200;
    assert!(open(&MessagePack, &other_codec).is_err());
    assert!(!is_tombstone(&s.bytes));
}

#[test]
fn v2_without_flags_opens() {
    let v1 = sealed(&"abc", None).bytes;
    let mut v2 = v1[..3].to_vec();
    v2[2] = V2;
    v2.push(v1[3]);
    v2.push(0);
    v2.extend_from_slice(&v1[4..]);
    let opened = open(&MessagePack, &v2).expect("version 2, no flags");
    assert_eq!(opened.fresh_until, at());
    assert_eq!(&*opened.payload, &v1[HEADER_LEN..]);
    assert!(open(&MessagePack, &v2[..V2_HEADER_LEN - 1]).is_err());
    let mut unknown_flag = v2.clone();
    unknown_flag[4] = 0x80;
    assert!(open(&MessagePack, &unknown_flag).is_err());
}

#[test]
fn small_or_incompressible_payloads_stay_v1() {
    assert_eq!(sealed(&"abc", Some(0)).bytes[2], V1);
    // Bytes no compressor shrinks.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    assert_eq!(sealed(&serde_bytes_like(&noise), Some(16)).bytes[2], V1);
    assert_eq!(sealed(&big(), None).bytes[2], V1);
}

/// `Vec<u8>` would encode as a list of numbers; a borrowed slice of bytes as a binary.
fn serde_bytes_like(bytes: &[u8]) -> impl serde::Serialize + '_ {
    struct B<'a>(&'a [u8]);
    impl serde::Serialize for B<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }
    B(bytes)
}

#[cfg(feature = "compression")]
#[test]
fn large_payloads_compress_and_open() {
    let plain = sealed(&big(), None);
    let packed = sealed(&big(), Some(1024));
    assert_eq!(packed.encoded_len, plain.encoded_len);
    assert_eq!(
        &packed.bytes[..5],
        [b'S', b'C', V2, MessagePack.id(), FLAG_LZ4]
    );
    assert!(
        packed.bytes.len() * 3 < plain.bytes.len(),
        "{} -> {}",
        plain.bytes.len(),
        packed.bytes.len()
    );
    let opened = open(&MessagePack, &packed.bytes).expect("compressed envelope");
    assert_eq!(opened.fresh_until, at());
    assert_eq!(&*opened.payload, &plain.bytes[HEADER_LEN..]);
    let back: Vec<(String, u32, String)> =
        MessagePack.from_slice(&opened.payload).expect("decodes");
    assert_eq!(back, big());
    // Below the threshold, or with compression off: version 1.
    assert_eq!(sealed(&big(), Some(plain.encoded_len + 1)).bytes[2], V1);
}

#[cfg(feature = "compression")]
#[test]
fn corrupt_compressed_payloads_are_misses() {
    let packed = sealed(&big(), Some(1024)).bytes;
    let len_at = V2_HEADER_LEN;
    // Truncated block.
    assert!(open(&MessagePack, &packed[..packed.len() - 7]).is_err());
    // No room for the length.
    assert!(open(&MessagePack, &packed[..len_at + 2]).is_err());
    // A length that does not match the block.
    let mut wrong_len = packed.clone();
    wrong_len[len_at] ^= 1;
    assert!(open(&MessagePack, &wrong_len).is_err());
    // A bomb: a huge claimed length is refused before anything is allocated.
    let mut bomb = packed.clone();
    bomb[len_at..len_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let err = open(&MessagePack, &bomb).expect_err("refused");
    assert!(err.to_string().contains("claims"), "{err}");
    // Garbage in the block.
    let mut garbage = packed.clone();
    for b in &mut garbage[len_at + 4..] {
        *b = 0xff;
    }
    assert!(open(&MessagePack, &garbage).is_err());
    // No corruption panics: every flipped byte and every truncation is an error or, at
    // worst, different bytes (which the codec then refuses).
    for i in len_at..packed.len() {
        let mut flipped = packed.clone();
        flipped[i] ^= 0x5a;
        let _ = open(&MessagePack, &flipped);
        let _ = open(&MessagePack, &packed[..i]);
    }
}

#[cfg(not(feature = "compression"))]
#[test]
fn compressed_entries_are_misses_without_the_feature() {
    let v1 = sealed(&"abc", Some(0)).bytes;
    let mut v2 = vec![b'S', b'C', V2, v1[3], FLAG_LZ4];
    v2.extend_from_slice(&v1[4..HEADER_LEN]);
    v2.extend_from_slice(&[3, 0, 0, 0, 0x30, b'a', b'b', b'c']);
    assert!(open(&MessagePack, &v2).is_err());
}

#[test]
fn tags_travel_with_the_entry_and_a_cut_section_is_a_miss() {
    let tags = [
        Key::from_escaped("folder:3".into()),
        Key::from_escaped("a:b".into()),
    ];
    let small = seal(
        &MessagePack,
        at(),
        Encodable::new(&7u32),
        None,
        &tags,
        &Lineage::Unrecorded,
    )
    .expect("encodes");
    let opened = open(&MessagePack, &small.bytes).expect("opens");
    assert_eq!(opened.tags, tags);
    assert_eq!(opened.fresh_until, at());
    assert_eq!(
        MessagePack
            .from_slice::<u32>(&opened.payload)
            .expect("decodes"),
        7
    );
    // Without tags, the entry stays version 1 and carries none.
    let plain = sealed(&7u32, None);
    assert_eq!(plain.bytes[2], V1);
    assert!(open(&MessagePack, &plain.bytes)
        .expect("opens")
        .tags
        .is_empty());
    // Compressed and tagged.
    #[cfg(feature = "compression")]
    {
        let (flags, carried, _) = compressed_with(&tags, &Lineage::Unrecorded);
        assert_eq!(flags, FLAG_LZ4 | FLAG_TAGS);
        assert_eq!(carried, tags);
    }
    // Any cut inside the tags section is an error (a miss), never a panic.
    for len in V2_HEADER_LEN..small.bytes.len() - 1 {
        let _ = open(&MessagePack, &small.bytes[..len]);
    }
    assert!(open(&MessagePack, &small.bytes[..V2_HEADER_LEN + 5]).is_err());
}

#[test]
fn the_lineage_travels_with_the_entry_and_a_cut_section_is_a_miss() {
    let tags = [Key::from_escaped("folder:3".into())];
    let loaded = Lineage::Loaded(Seen {
        class: Some(3),
        namespace: None,
        tags: vec![
            (Key::from_escaped("folder:3".into()), -5),
            (Key::from_escaped("t".into()), i64::MAX),
        ],
        written: 1_767_225_600_123,
    });
    for (lineage, carried) in [
        (&loaded, &tags[..]),
        (&loaded, &[][..]),
        (&Lineage::Explicit, &tags[..]),
        (&Lineage::Explicit, &[][..]),
    ] {
        let sealed = seal(
            &MessagePack,
            at(),
            Encodable::new(&7u32),
            None,
            carried,
            lineage,
        )
        .expect("encodes");
        assert_eq!(sealed.bytes[2], V2);
        let opened = open(&MessagePack, &sealed.bytes).expect("opens");
        assert_eq!(&opened.lineage, lineage);
        assert_eq!(opened.tags, carried);
        assert_eq!(
            MessagePack
                .from_slice::<u32>(&opened.payload)
                .expect("decodes"),
            7
        );
        // Any cut inside the sections is an error (a miss) or a payload that does not
        // decode, never a panic.
        for len in V2_HEADER_LEN..sealed.bytes.len() - 1 {
            let _ = open(&MessagePack, &sealed.bytes[..len]);
        }
    }
    let sealed = seal(
        &MessagePack,
        at(),
        Encodable::new(&7u32),
        None,
        &[],
        &loaded,
    )
    .expect("encodes");
    assert!(open(&MessagePack, &sealed.bytes[..V2_HEADER_LEN + 12]).is_err());
    // An unknown kind is an error, not a guess; so is the kind earlier builds wrote for a
    // load, whose layout had no write time.
    for kind in [9, 2] {
        let mut unknown = sealed.bytes.clone();
        unknown[V2_HEADER_LEN] = kind;
        assert!(open(&MessagePack, &unknown).is_err(), "kind {kind}");
    }
    #[cfg(feature = "compression")]
    {
        let (flags, _, lineage) = compressed_with(&tags, &loaded);
        assert_eq!(flags, FLAG_LZ4 | FLAG_TAGS | FLAG_LINEAGE);
        assert_eq!(lineage, loaded);
    }
}
