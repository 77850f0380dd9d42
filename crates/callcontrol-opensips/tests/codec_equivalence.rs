//! The request decoder against a verbatim copy of its previous version
//! (`reference_decoder/`): on the golden corpus of `codec_props.rs` (same
//! generator, same seed, 50,000 inputs), on the bounds' edge cases and on
//! arbitrary bytes, however the input is split, both must give the same
//! requests and errors, hold the same number of bytes after every read and
//! agree on whether a request is under way.

use callcontrol_core::request::Request;
use callcontrol_opensips::codec::{parse_request, Decoder, MAX_LINE, MAX_LINES};
use callcontrol_opensips::ProtocolError;
use proptest::prelude::*;

mod corpus;
mod reference_decoder;

use corpus::{corpus, pieces};

type Out = Vec<Result<Request, ProtocolError>>;

/// What a decoder shows of itself: the results in order, and after each
/// read the bytes it holds and whether it is inside a request.
#[derive(Debug, PartialEq)]
struct Trace {
    out: Out,
    states: Vec<(usize, bool)>,
}

macro_rules! run_decoder {
    ($new:expr, $input:expr, $cuts:expr) => {{
        let mut d = $new;
        let mut out = Vec::new();
        let mut states = Vec::new();
        for piece in pieces($input, $cuts) {
            d.feed(piece);
            while let Some(r) = d.decode() {
                out.push(r);
            }
            states.push((d.buffered(), d.in_request()));
        }
        Trace { out, states }
    }};
}

fn new_decoder(input: &[u8], cuts: &[usize]) -> Trace {
    run_decoder!(Decoder::new(), input, cuts)
}

fn old_decoder(input: &[u8], cuts: &[usize]) -> Trace {
    run_decoder!(reference_decoder::Decoder::new(), input, cuts)
}

#[track_caller]
fn assert_same(input: &[u8], cuts: &[usize]) {
    let new = new_decoder(input, cuts);
    let old = old_decoder(input, cuts);
    assert_eq!(
        new,
        old,
        "input {:?} cut at {cuts:?}",
        String::from_utf8_lossy(input)
    );
}

#[track_caller]
fn assert_same_parse(block: &[u8]) {
    assert_eq!(
        parse_request(block),
        reference_decoder::parse_request(block),
        "block {:?}",
        String::from_utf8_lossy(block)
    );
}

/// A share of the golden corpus, every input also split at every byte.
#[test]
fn the_golden_corpus_decodes_as_before() {
    golden_corpus(2_500);
}

/// All 50,000 inputs (a few seconds in release:
/// `cargo test --release -p callcontrol-opensips --test codec_equivalence -- --ignored`).
#[test]
#[ignore]
fn the_whole_golden_corpus_decodes_as_before() {
    golden_corpus(50_000);
}

fn golden_corpus(n: usize) {
    for (n, input) in corpus(0x9e37_79b9_7f4a_7c15, 50_000)
        .iter()
        .take(n)
        .enumerate()
    {
        assert_same(input, &[]);
        for block in input.split(|&b| b == b'\n') {
            assert_same_parse(block);
        }
        assert_same_parse(input);
        if n % 16 == 0 {
            // Split everywhere, and at a few places.
            assert_same(input, &(0..input.len()).collect::<Vec<_>>());
            let cuts: Vec<usize> = (0..4).map(|i| n * 7919 + i * 104_729).collect();
            assert_same(input, &cuts);
        }
    }
}

/// Lines and blocks at and around the bounds, with each line end, split
/// around the interesting places; discarding after the error, with blank
/// and whitespace-only lines before the empty one that ends it.
#[test]
fn the_bounds_behave_as_before() {
    let mut inputs: Vec<Vec<u8>> = Vec::new();
    for end in [&b"\r\n"[..], b"\n", b"\r\r\n", b" \r\n"] {
        for len in [
            MAX_LINE - 1,
            MAX_LINE,
            MAX_LINE + 1,
            MAX_LINE + 2,
            3 * MAX_LINE,
        ] {
            for first in [false, true] {
                let mut input = Vec::new();
                if !first {
                    input.extend_from_slice(b"stop");
                    input.extend_from_slice(end);
                }
                let line_start = input.len();
                input.extend_from_slice(b"callid: ");
                input.resize(line_start + len, b'c');
                input.extend_from_slice(end);
                input.extend_from_slice(b"x: y");
                input.extend_from_slice(end);
                input.extend_from_slice(b" \t");
                input.extend_from_slice(end);
                input.extend_from_slice(end);
                input.extend_from_slice(b"stop\r\ncallid: c\r\n\r\n");
                inputs.push(input);
            }
        }
        for lines in [MAX_LINES - 1, MAX_LINES, MAX_LINES + 1, 3 * MAX_LINES] {
            for cmd in [&b"init"[..], b"bogus", b"Terminate"] {
                let mut input = cmd.to_vec();
                input.extend_from_slice(end);
                for i in 1..lines {
                    input.extend_from_slice(format!("x{i}: y").as_bytes());
                    input.extend_from_slice(end);
                }
                input.extend_from_slice(b"\t");
                input.extend_from_slice(end);
                input.extend_from_slice(b"callid: after\r\n\r\nstop\ncallid: d\n\n");
                inputs.push(input);
            }
        }
    }
    for input in &inputs {
        assert_same(input, &[]);
        assert_same_parse(input);
        let around = |p: usize| (p.saturating_sub(3)..p + 3).collect::<Vec<_>>();
        for p in [MAX_LINE, MAX_LINE + 8, MAX_LINE + 16, input.len() / 2] {
            for cut in around(p) {
                assert_same(input, &[cut]);
                assert_same(input, &[cut, cut + 1, cut + 2]);
            }
        }
        assert_same(input, &(0..input.len()).step_by(61).collect::<Vec<_>>());
        assert_same(input, &(0..input.len()).step_by(4093).collect::<Vec<_>>());
    }
}

/// Bytes with line ends, colons, whitespace and UTF-8 pieces made likely
/// (a table lookup: a `prop_oneof!` per byte is slow to generate).
fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    const LIKELY: &[u8] = b"\n\n\n::\r\r \t\x0b\x0c\xc3\xa9\xe2\x82";
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(|v| {
        v.into_iter()
            .map(|b| match LIKELY.get(usize::from(b) % 64) {
                Some(&l) if b < 128 => l,
                _ => b,
            })
            .collect()
    })
}

fn piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        bytes(12),
        Just(b"init\r\n".to_vec()),
        Just(b"start\r\n".to_vec()),
        Just(b"Stop\n".to_vec()),
        Just(b"debug\r\n".to_vec()),
        Just(b"terminate\r\n".to_vec()),
        Just(b"callid: c\r\n".to_vec()),
        Just(b"CallID:c\n".to_vec()),
        Just(b"ruri: sip:a@b\r\n".to_vec()),
        Just(b"from: x\r\n".to_vec()),
        Just(b"sourceip: 1\r\n".to_vec()),
        Just(b"diverter: None\r\n".to_vec()),
        Just(b"dialogid: 12:34\r\n".to_vec()),
        Just(b"show: session\r\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n".to_vec()),
        (0usize..3).prop_map(|k| vec![b'a'; MAX_LINE - 1 + k]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_input_decodes_as_before(
            pieces in proptest::collection::vec(piece(), 0..40),
            cuts in proptest::collection::vec(any::<usize>(), 0..12)) {
        let input = pieces.concat();
        prop_assert_eq!(new_decoder(&input, &cuts), old_decoder(&input, &cuts));
        prop_assert_eq!(parse_request(&input), reference_decoder::parse_request(&input));
    }

    #[test]
    fn arbitrary_bytes_decode_as_before(
            input in bytes(2048),
            cuts in proptest::collection::vec(any::<usize>(), 0..12)) {
        prop_assert_eq!(new_decoder(&input, &cuts), old_decoder(&input, &cuts));
        prop_assert_eq!(parse_request(&input), reference_decoder::parse_request(&input));
    }
}
