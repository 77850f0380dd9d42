//! Property tests over the CDRTool reply handling (the functions the
//! `fuzz/` target `cdrtool_reply` drives): framing finds exactly the reply
//! text whatever newlines surround it, the parsers type a well-formed reply
//! however its case, spacing and extra lines vary, and nothing panics on
//! arbitrary bytes.

use callcontrol_core::rating::{AccountType, Authorisation, DebitOutcome, RatedLimit};
use callcontrol_rating::cdrtool::codec::{
    frame_reply, parse_debit_balance, parse_get_balance, parse_max_session_time, Frame,
};
use proptest::prelude::*;

/// Newlines and carriage returns, as the engine may put around a reply.
fn newlines() -> impl Strategy<Value = String> {
    proptest::collection::vec(prop_oneof![Just('\n'), Just('\r')], 0..4).prop_map(String::from_iter)
}

/// A line the parsers must ignore: tariff details and unknown keys.
fn noise() -> impl Strategy<Value = String> {
    prop_oneof![
        "Duration: [0-9]{1,4} s",
        "Price: [0-9]{1,3}\\.[0-9]{4}",
        "[A-Za-z]{1,12}=[A-Za-z0-9 ]{0,12}",
    ]
}

/// `s` in a random mix of upper and lower case.
fn any_case(s: &'static str) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<bool>(), s.len()).prop_map(move |up| {
        s.chars()
            .zip(up)
            .map(|(c, u)| {
                if u {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn framing_finds_the_reply_text(before in newlines(), text in "[A-Za-z0-9=. ]{0,8}[A-Za-z0-9=.]",
                                    inner in "(\n[A-Za-z0-9=. ]{0,8}[A-Za-z0-9=.]){0,3}",
                                    cr in any::<bool>(), extra in newlines()) {
        let body = format!("{text}{inner}");
        let end = if cr { "\r\n\r\n" } else { "\n\n" };
        let buf = format!("{before}{body}{end}{extra}");
        match frame_reply(buf.as_bytes()) {
            Frame::Complete { start, end } => prop_assert_eq!(&buf[start..end], body.as_str()),
            Frame::Incomplete => prop_assert!(false, "complete reply not framed: {:?}", buf),
        }
        // Cut before its final blank line, it is not complete yet.
        let cut = before.len() + body.len() + 1;
        prop_assert_eq!(frame_reply(&buf.as_bytes()[..cut]), Frame::Incomplete);
    }

    #[test]
    fn max_session_time_is_typed(limit in prop_oneof![
                                     (0u64..1_000_000).prop_map(Some),
                                     Just(None)],
                                 fraction in proptest::option::of("[0-9]{1,4}"),
                                 prepaid in proptest::option::of(any::<bool>()),
                                 key in any_case("type"), none in any_case("none"),
                                 noise in proptest::collection::vec(noise(), 0..3),
                                 pad in " {0,3}") {
        let first = match (limit, &fraction) {
            (Some(n), Some(f)) => format!("{n}.{f}"),
            (Some(n), None) => n.to_string(),
            (None, _) => none,
        };
        let mut body = format!("{pad}{first}{pad}\n");
        for line in &noise {
            body.push_str(line);
            body.push('\n');
        }
        if let Some(p) = prepaid {
            let kind = if p { "Prepaid" } else { "postpaid" };
            body.push_str(&format!("{key}{pad}={pad}{kind}\n"));
        }
        let expected = Authorisation {
            limit: limit.map_or(RatedLimit::Unlimited, RatedLimit::Seconds),
            account: prepaid.map(|p| if p { AccountType::Prepaid } else { AccountType::Postpaid }),
        };
        // Unknown `key=value` noise lines named `type` would change the type.
        prop_assume!(!noise.iter().any(|l| l.split('=').next().is_some_and(|k| k.trim().eq_ignore_ascii_case("type"))));
        prop_assert_eq!(parse_max_session_time(&body).ok(), Some(expected));
    }

    #[test]
    fn debit_balance_is_typed(max in proptest::option::of(0u64..100_000),
                              price in proptest::option::of("[0-9]{1,3}\\.[0-9]{4}"),
                              ok in any_case("ok"), key in any_case("maxsessiontime"),
                              noise in proptest::collection::vec("Duration: [0-9]{1,4} s", 0..3)) {
        let mut body = format!("{ok}\n");
        if let Some(m) = max {
            body.push_str(&format!("{key}={m}\n"));
        }
        for line in &noise {
            body.push_str(line);
            body.push('\n');
        }
        if let Some(p) = &price {
            body.push_str(p);
        }
        let expected = DebitOutcome::Debited { max_session_time: max, price: price.clone() };
        prop_assert_eq!(parse_debit_balance(&body).ok(), Some(expected));
    }

    #[test]
    fn engine_errors_are_errors(message in "[A-Za-z ]{0,20}", error in any_case("error")) {
        let body = format!("{error}: {message}\n");
        prop_assert!(parse_max_session_time(&body).is_err());
        prop_assert!(parse_debit_balance(&body).is_err());
        prop_assert!(parse_get_balance(&body).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(input in proptest::collection::vec(
            prop_oneof![any::<u8>(), Just(b'\n'), Just(b'='), Just(b'.'), Just(b'9')], 0..512)) {
        if let Frame::Complete { start, end } = frame_reply(&input) {
            prop_assert!(start <= end && end <= input.len());
            prop_assert!(input[end..].iter().filter(|&&b| b == b'\n').count() >= 2);
        }
        callcontrol_rating::testkit::parse_as_every_reply(&String::from_utf8_lossy(&input));
    }
}
