//! Property tests over the request decoder (the same function the
//! `fuzz/` target drives): it never panics, its memory stays bounded, and
//! how the input is split never changes what it decodes.

use callcontrol_core::request::Request;
use callcontrol_opensips::codec::{encode_request, Decoder, MAX_LINE, MAX_LINES};
use callcontrol_opensips::testkit::opensips_init;
use callcontrol_opensips::ProtocolError;
use proptest::prelude::*;

fn decode_in_chunks(input: &[u8], cuts: &[usize]) -> (Vec<Result<Request, ProtocolError>>, usize) {
    let mut d = Decoder::new();
    let mut out = Vec::new();
    let mut max_buffered = 0;
    let mut pos = 0;
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.push(input.len());
    for cut in cuts {
        if cut < pos {
            continue;
        }
        d.feed(&input[pos..cut]);
        pos = cut;
        max_buffered = max_buffered.max(d.buffered());
        while let Some(r) = d.decode() {
            out.push(r);
        }
    }
    (out, max_buffered)
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        ("[a-z0-9@.-]{1,40}", "[a-z]{1,10}")
            .prop_map(|(c, u)| Request::Init(opensips_init(&c, &u))),
        "[a-z0-9@.-]{1,40}".prop_map(|c| Request::Stop {
            call_id: c.as_str().into()
        }),
        "[a-z0-9@.-]{1,40}".prop_map(|c| Request::Terminate {
            call_id: c.as_str().into()
        }),
        Just(Request::List { user: None }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn splitting_never_changes_the_result(reqs in proptest::collection::vec(request(), 1..8),
                                          cuts in proptest::collection::vec(any::<usize>(), 0..20)) {
        let mut input = Vec::new();
        for r in &reqs {
            input.extend(encode_request(r));
        }
        let (whole, _) = decode_in_chunks(&input, &[]);
        let (split, _) = decode_in_chunks(&input, &cuts);
        prop_assert_eq!(&whole, &split);
        let expected: Vec<_> = reqs.into_iter().map(Ok).collect();
        prop_assert_eq!(whole, expected);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_stay_bounded(input in proptest::collection::vec(
            prop_oneof![any::<u8>(), Just(b'\n'), Just(b':'), Just(b'\r')], 0..4096),
            cuts in proptest::collection::vec(any::<usize>(), 0..20)) {
        let (_, max) = decode_in_chunks(&input, &cuts);
        prop_assert!(max <= (MAX_LINES + 1) * (MAX_LINE + 2) + input.len().min(4096));
    }

    #[test]
    fn a_valid_request_after_any_garbage_and_an_empty_line_is_decoded(
            garbage in proptest::collection::vec(any::<u8>(), 0..3000),
            call in "[a-z0-9]{1,20}") {
        let mut input = garbage;
        input.extend_from_slice(b"\r\n\r\n");
        let stop = Request::Stop { call_id: call.as_str().into() };
        input.extend(encode_request(&stop));
        let (out, _) = decode_in_chunks(&input, &[]);
        prop_assert_eq!(out.last(), Some(&Ok(stop)));
    }
}

#[test]
fn memory_stays_bounded_under_an_endless_line() {
    let mut d = Decoder::new();
    let chunk = vec![b'x'; 16 * 1024];
    let mut errors = 0;
    for _ in 0..40 {
        d.feed(&chunk);
        while let Some(r) = d.decode() {
            assert!(r.is_err());
            errors += 1;
        }
        assert!(d.buffered() <= MAX_LINE + chunk.len());
    }
    assert_eq!(errors, 1);
}
