//! Property tests over what comes back from the proxy's management
//! interface (the functions the `fuzz/` target `rpc_reply` drives): JSON-RPC
//! replies and plain-text errors are read back as sent, dialog listings of
//! OpenSIPS and Kamailio give the dialogs they hold, DIDs round-trip, and
//! nothing panics on arbitrary bytes or numbers.

use callcontrol_core::types::{CallId, DialogId, Timestamp};
use callcontrol_opensips::error::RpcError;
use callcontrol_opensips::{jsonrpc, kamailio, mi};
use proptest::prelude::*;
use serde_json::{json, Value};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_-]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Passes when `got` is the proxy's error `code` with `message`.
fn is_remote(got: Result<Value, RpcError>, code: i64, message: &str) -> Result<(), TestCaseError> {
    match got {
        Err(RpcError::Remote {
            code: c,
            message: m,
        }) => {
            prop_assert_eq!(c, code);
            prop_assert_eq!(m.as_str(), message);
            Ok(())
        }
        other => Err(TestCaseError::fail(format!("{other:?}"))),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn a_result_is_read_back(id in any::<u64>(), result in json_value(), pad in "[ \r\n]{0,3}") {
        let reply = format!("{pad}{}{pad}", json!({"jsonrpc": "2.0", "id": id, "result": result}));
        let (got_id, got) = jsonrpc::parse_response(reply.as_bytes());
        prop_assert_eq!(got_id, Some(id));
        prop_assert_eq!(got.ok(), Some(result));
    }

    #[test]
    fn an_error_is_read_back(id in any::<u64>(), code in any::<i64>(), message in ".{0,20}") {
        let reply = json!({"jsonrpc": "2.0", "id": id.to_string(),
                           "error": {"code": code, "message": message}}).to_string();
        let (got_id, got) = jsonrpc::parse_response(reply.as_bytes());
        prop_assert_eq!(got_id, Some(id));
        is_remote(got, code, &message)?;
    }

    #[test]
    fn a_plain_text_error_is_read_back(code in 100i64..1000, message in "[A-Za-z][A-Za-z ]{0,20}[a-z]") {
        let (id, got) = jsonrpc::parse_response(format!("{code} {message}\n").as_bytes());
        prop_assert_eq!(id, None);
        is_remote(got, code, &message)?;
    }

    #[test]
    fn dids_round_trip(h_entry in any::<u32>(), h_id in any::<u32>()) {
        let d = DialogId::new(h_entry, h_id);
        prop_assert_eq!(mi::parse_did(&mi::did(d)), Some(d));
    }

    #[test]
    fn an_opensips_listing_gives_its_live_dialogs(
            dialogs in proptest::collection::vec(
                ("[a-z0-9@.-]{1,20}", any::<u32>(), any::<u32>(), 1u64..=5, any::<u64>(), any::<bool>()),
                0..6)) {
        let listed: Vec<Value> = dialogs.iter().map(|(c, e, i, state, start, did)| {
            let id = DialogId::new(*e, *i);
            if *did {
                json!({"callid": c, "ID": mi::did(id), "state": state, "timestart": start})
            } else {
                json!({"callid": c, "db_id": id.as_u64(), "state": state, "timestart": start})
            }
        }).collect();
        let got = mi::parse_dialog_list(&json!({"Dialogs": listed}));
        let live: Vec<_> = dialogs.iter().filter(|d| d.3 != 5).collect();
        prop_assert_eq!(got.len(), live.len());
        for (g, (c, e, i, state, start, _)) in got.iter().zip(live) {
            prop_assert_eq!(&g.call_id, &CallId::new(c.as_str()));
            prop_assert_eq!(g.dialog_id, Some(DialogId::new(*e, *i)));
            let answered = (*start > 0 && (*state == 3 || *state == 4))
                .then(|| start.checked_mul(1000).map(Timestamp))
                .flatten();
            prop_assert_eq!(g.answered, answered);
        }
    }

    #[test]
    fn a_kamailio_listing_gives_its_dialogs(
            dialogs in proptest::collection::vec(("[a-z0-9@.-]{1,20}", any::<u32>(), any::<u32>(), 1u32..=5), 0..6)) {
        let listed: Vec<Value> = dialogs.iter().map(|(c, e, i, s)| {
            json!({"call-id": c, "h_entry": e, "h_id": i, "state": s})
        }).collect();
        let got = kamailio::parse_dialogs(&Value::Array(listed)).expect("an array");
        prop_assert_eq!(got.len(), dialogs.len());
        for (g, (c, e, i, s)) in got.iter().zip(&dialogs) {
            prop_assert_eq!(&g.call_id, &CallId::new(c.as_str()));
            prop_assert_eq!(g.dialog_id, DialogId::new(*e, *i));
            prop_assert_eq!(g.is_live(), *s < 5);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(input in proptest::collection::vec(
            prop_oneof![any::<u8>(), Just(b'{'), Just(b'"'), Just(b'.'), Just(b'4')], 0..512)) {
        callcontrol_opensips::testkit::parse_as_every_reply(&input);
        if let Some(d) = mi::parse_did(&String::from_utf8_lossy(&input)) {
            prop_assert_eq!(mi::parse_did(&mi::did(d)), Some(d));
        }
    }
}
