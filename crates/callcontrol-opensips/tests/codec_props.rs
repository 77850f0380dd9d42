//! Property tests over the request decoder (the same function the
//! `fuzz/` target drives): it never panics, its memory stays bounded, and
//! how the input is split never changes what it decodes.

use callcontrol_core::request::Request;
use callcontrol_opensips::codec::{encode_request, Decoder, MAX_LINE, MAX_LINES};
use callcontrol_opensips::testkit::opensips_init;
use callcontrol_opensips::ProtocolError;
use proptest::prelude::*;

mod corpus;
use corpus::{corpus, pieces};

fn decode_in_chunks(input: &[u8], cuts: &[usize]) -> (Vec<Result<Request, ProtocolError>>, usize) {
    let mut d = Decoder::new();
    let mut out = Vec::new();
    let mut max_buffered = 0;
    for piece in pieces(input, cuts) {
        d.feed(piece);
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

/// Writes what the decoder makes of [`corpus`] to `$CODEC_GOLDEN` (to
/// compare two versions of the decoder).
#[test]
#[ignore]
fn dump_golden() {
    use std::fmt::Write as _;
    let Ok(path) = std::env::var("CODEC_GOLDEN") else {
        return;
    };
    let mut text = String::new();
    for input in corpus(0x9e37_79b9_7f4a_7c15, 50_000) {
        let (out, _) = decode_in_chunks(&input, &[]);
        let _ = writeln!(text, "{out:?}");
        for block in input.split(|&b| b == b'\n') {
            let _ = write!(
                text,
                "{:?};",
                callcontrol_opensips::codec::parse_request(block)
            );
        }
        let _ = writeln!(
            text,
            "{:?}",
            callcontrol_opensips::codec::parse_request(&input)
        );
    }
    std::fs::write(path, text).unwrap();
}

/// The decoder parses from the line spans it records while framing;
/// `parse_request` is the general path over any bytes. They must agree on
/// every block of the corpus, however the input is split.
#[test]
fn framed_parsing_agrees_with_the_general_parser_however_split() {
    use callcontrol_opensips::codec::parse_request;
    for (n, input) in corpus(0x2545_f491_4f6c_dd1d, 3000).into_iter().enumerate() {
        let (whole, _) = decode_in_chunks(&input, &[]);
        let cuts: Vec<usize> = (0..6).map(|i| n * 7919 + i * 104_729).collect();
        let (split, _) = decode_in_chunks(&input, &cuts);
        assert_eq!(whole, split, "input {:?}", String::from_utf8_lossy(&input));
        let (bytewise, _) = decode_in_chunks(&input, &(0..input.len()).collect::<Vec<_>>());
        assert_eq!(
            whole,
            bytewise,
            "input {:?}",
            String::from_utf8_lossy(&input)
        );
        // Each block on its own, by the general parser.
        let mut blocks = Vec::new();
        let mut block: Vec<&[u8]> = Vec::new();
        for line in input.split_inclusive(|&b| b == b'\n') {
            if line.iter().all(u8::is_ascii_whitespace) {
                if !block.is_empty() {
                    blocks.push(block.concat());
                    block.clear();
                }
            } else {
                block.push(line);
            }
        }
        let general: Vec<_> = blocks.iter().map(|b| parse_request(b)).collect();
        assert_eq!(
            whole,
            general,
            "input {:?}",
            String::from_utf8_lossy(&input)
        );
    }
}

fn decode_one(input: &[u8]) -> Vec<Result<Request, ProtocolError>> {
    decode_in_chunks(input, &[]).0
}

fn stop(call_id: &str) -> Result<Request, ProtocolError> {
    Ok(Request::Stop {
        call_id: call_id.into(),
    })
}

#[test]
fn line_ends_separators_and_case() {
    for input in [
        &b"stop\r\ncallid: c\r\n\r\n"[..],
        b"stop\ncallid: c\n\n",
        b"stop\r\ncallid:c\r\n\n",
        b"STOP\r\nCALLID:   c \t\r\n \r\n",
        b"\r\n\n  \r\nsToP  \n  CallId : c\r\n\t\n",
        b"stop\r\ncallid: x\r\nfoo: bar\r\ncallid: c\r\n\r\n",
    ] {
        assert_eq!(
            decode_one(input),
            vec![stop("c")],
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
    // The last of a repeated key wins, in init too.
    let mut init = encode_request(&Request::Init(opensips_init("a", "u")));
    init.truncate(init.len() - 2);
    init.extend_from_slice(b"CallID:b\r\nruri: sip:x@y\r\n\r\n");
    let Ok(Request::Init(i)) = &decode_one(&init)[0] else {
        panic!()
    };
    assert_eq!(i.call_id.as_str(), "b");
    assert_eq!(i.ruri, "sip:x@y");
}

#[test]
fn a_line_of_exactly_max_line_is_accepted_however_split() {
    for end in [&b"\r\n"[..], b"\n"] {
        let mut input = b"stop\r\ncallid: ".to_vec();
        input.resize(6 + MAX_LINE, b'c');
        input.extend_from_slice(end);
        input.extend_from_slice(b"\r\n");
        let expected = stop(&"c".repeat(MAX_LINE - 8));
        for cut in input.len() - 5..input.len() {
            assert_eq!(decode_in_chunks(&input, &[cut]).0, vec![expected.clone()]);
        }
        // One byte more is too long, wherever the input is split.
        let mut long = input.clone();
        long.insert(10, b'c');
        for cut in [0, 10, long.len() - 4, long.len() - 3, long.len() - 2] {
            assert_eq!(
                decode_in_chunks(&long, &[cut]).0,
                vec![Err(ProtocolError::LineTooLong(MAX_LINE, "stop"))],
                "cut at {cut}"
            );
        }
    }
}

#[test]
fn the_line_bound_counts_non_blank_lines() {
    let block = |lines: usize| {
        let mut b = b"stop\r\ncallid: c\r\n".to_vec();
        for i in 2..lines {
            b.extend_from_slice(format!("x{i}: y\r\n").as_bytes());
        }
        b.extend_from_slice(b"\r\n");
        b
    };
    assert_eq!(decode_one(&block(MAX_LINES)), vec![stop("c")]);
    assert_eq!(
        decode_one(&block(MAX_LINES + 1)),
        vec![Err(ProtocolError::TooManyLines(MAX_LINES, "stop"))]
    );
}

#[test]
fn invalid_utf8_is_an_error_reply_and_the_connection_goes_on() {
    let out = decode_one(b"init\r\nruri: \xc3\x28\r\n\r\nstop\r\ncallid: \xe2\x82\r\n\r\nstop\r\ncallid: caf\xc3\xa9\r\n\r\n");
    assert_eq!(
        out,
        vec![
            Err(ProtocolError::InvalidUtf8("init")),
            Err(ProtocolError::InvalidUtf8("stop")),
            stop("café"),
        ]
    );
    assert_eq!(out[0].as_ref().unwrap_err().reply_bytes(), b"Error\r\n");
}
