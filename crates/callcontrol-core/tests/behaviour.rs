//! One named test per rule of BEHAVIOUR.md, against the sans-IO engine.
//! Time is a plain number here: a two-hour call takes microseconds.

mod common;

use std::time::Duration;

use callcontrol_core::prelude::*;
use common::*;

fn prepaid_cfg() -> EngineConfig {
    EngineConfig {
        limit: None,
        ..Default::default()
    }
}

// ---- words: billing party ---------------------------------------------------

#[test]
fn billing_party_comes_from_the_diverter_when_set() {
    let mut h = Harness::fixed(Some(60));
    let req = call("c1").diverter("bob@example.org");
    assert_eq!(h.init_now(req), InitReply::Limited);
    assert_eq!(
        h.engine.session("c1").unwrap().party.as_str(),
        "sip:bob@example.org"
    );
}

#[test]
fn billing_party_comes_from_the_from_uri_without_port_or_params() {
    let mut h = Harness::fixed(Some(60));
    let req = InitRequest::new(
        "c1",
        "\"A\" <sip:alice@Example.com:5060;transport=udp>",
        "sip:x@y",
    );
    assert_eq!(h.init_now(req), InitReply::Limited);
    assert_eq!(
        h.engine.session("c1").unwrap().party.as_str(),
        "sip:alice@example.com"
    );
}

#[test]
fn diverter_none_means_no_diverter() {
    let mut h = Harness::fixed(Some(60));
    assert_eq!(h.init_now(call("c1").diverter("None")), InitReply::Limited);
    assert_eq!(
        h.engine.session("c1").unwrap().party.as_str(),
        "sip:alice@example.com"
    );
}

#[test]
fn from_without_a_sip_uri_is_answered_error_not_a_panic() {
    let mut h = Harness::fixed(Some(60));
    for from in ["<tel:+3120>", "", "garbage", "\"open quote <sip:a@b>"] {
        assert_eq!(
            h.init_now(InitRequest::new("c1", from, "sip:x@y")),
            InitReply::Error,
            "{from}"
        );
    }
    assert!(h.engine.is_empty());
}

// ---- init -------------------------------------------------------------------

#[test]
fn init_with_a_fixed_limit_is_limited_and_tracked() {
    let mut h = Harness::fixed(Some(600));
    assert_eq!(h.init_now(call("c1")), InitReply::Limited);
    assert_eq!(h.state_of("c1"), Some(SessionState::Pending));
    assert_eq!(h.engine.session("c1").unwrap().limit, Some(600));
}

#[test]
fn init_without_limit_or_call_limit_is_no_limit_and_not_tracked() {
    let mut h = Harness::fixed(None);
    assert_eq!(h.init_now(call("c1")), InitReply::NoLimit);
    assert!(h.engine.is_empty());
}

#[test]
fn duplicated_callid_with_a_different_token_is_refused_and_the_session_untouched() {
    let mut h = Harness::fixed(Some(600));
    assert_eq!(h.init_now(call("c1").token("t1")), InitReply::Limited);
    let before = h.engine.session("c1").unwrap().clone();
    let mut other = call_from("c1", "mallory");
    other.call_token = Some("t2".into());
    assert_eq!(h.init_now(other), InitReply::DuplicatedCallId);
    assert_eq!(h.engine.session("c1").unwrap(), &before);
}

#[test]
fn same_token_resent_init_keeps_the_session() {
    let mut h = Harness::fixed(Some(600));
    assert_eq!(h.init_now(call("c1").token("t1")), InitReply::Limited);
    assert_eq!(h.init_now(call("c1").token("t1")), InitReply::Limited);
    assert_eq!(h.engine.len(), 1);
}

#[test]
fn resent_prepaid_init_with_changed_ruri_releases_and_rates_again() {
    let mut h = Harness::new(prepaid_cfg());
    let r = h.prepaid_init(
        call("c1").prepaid(true).token("t"),
        Ok(Authorisation::prepaid(600)),
    );
    assert_eq!(r, InitReply::Limited);
    let mut again = call("c1").prepaid(true).token("t");
    again.ruri = "sip:other@example.com".into();
    assert!(h.init(again).is_none(), "rated again");
    let token = h.last_token();
    let releases = h.take_debits();
    assert_eq!(releases.len(), 1);
    assert_eq!(
        releases[0].1.duration, 0,
        "old authorisation released with Duration=0"
    );
    assert!(
        h.take_authorisations().is_empty(),
        "rated again only once the release is answered"
    );
    h.advance_millis(5);
    h.debited(releases[0].0, debited(None));
    let auths = h.take_authorisations();
    assert_eq!(auths.len(), 1);
    assert_eq!(auths[0].1.to, "sip:other@example.com");
    h.authorised(auths[0].0, Ok(Authorisation::prepaid(300)));
    assert_eq!(h.take_reply(token), Some(Reply::Init(InitReply::Limited)));
    assert_eq!(h.engine.session("c1").unwrap().limit, Some(300));
    assert_eq!(
        &*h.engine.session("c1").unwrap().ruri,
        "sip:other@example.com"
    );
}

#[test]
fn resent_init_with_changed_diverter_is_rated_again() {
    let mut h = Harness::new(prepaid_cfg());
    h.prepaid_init(call("c1").prepaid(true), Ok(Authorisation::prepaid(600)));
    let again = call("c1").prepaid(true).diverter("carol@example.com");
    assert!(h.init(again).is_none());
    let release = h.take_debits();
    h.debited(release[0].0, debited(None));
    assert_eq!(
        h.take_authorisations()[0].1.party.as_str(),
        "sip:carol@example.com"
    );
}

#[test]
fn resent_init_after_start_keeps_the_session_even_if_ruri_changed() {
    let mut h = Harness::fixed(Some(600));
    h.init_now(call("c1"));
    h.start("c1", None);
    let mut again = call("c1");
    again.ruri = "sip:new@example.com".into();
    assert_eq!(h.init_now(again), InitReply::Limited);
    assert_eq!(h.state_of("c1"), Some(SessionState::InProgress));
}

#[test]
fn call_limit_counts_tracked_sessions_per_billing_party() {
    let mut h = Harness::fixed(None);
    assert_eq!(
        h.init_now(call_from("a1", "alice").call_limit(2)),
        InitReply::Limited
    );
    assert_eq!(
        h.init_now(call_from("a2", "alice").call_limit(2)),
        InitReply::Limited
    );
    assert_eq!(
        h.init_now(call_from("a3", "alice").call_limit(2)),
        InitReply::CallLimitReached
    );
    // Another party is counted on its own.
    assert_eq!(
        h.init_now(call_from("b1", "bob").call_limit(2)),
        InitReply::Limited
    );
    // When one of alice's calls ends, a new one fits.
    h.stop("a1");
    assert_eq!(
        h.init_now(call_from("a4", "alice").call_limit(2)),
        InitReply::Limited
    );
}

#[test]
fn call_limit_is_checked_before_locked_and_no_credit() {
    let mut h = Harness::new(prepaid_cfg());
    h.init_now(call("x").call_limit(1));
    let r = h.prepaid_init(
        call("c1").prepaid(true).call_limit(1),
        Ok(Authorisation {
            limit: RatedLimit::Locked,
            account: Some(AccountType::Prepaid),
        }),
    );
    assert_eq!(r, InitReply::CallLimitReached);
}

#[test]
fn prepaid_locked_answer_is_locked() {
    let mut h = Harness::new(prepaid_cfg());
    let r = h.prepaid_init(
        call("c1").prepaid(true),
        Ok(Authorisation {
            limit: RatedLimit::Locked,
            account: Some(AccountType::Prepaid),
        }),
    );
    assert_eq!(r, InitReply::Locked);
    assert!(h.engine.is_empty());
}

#[test]
fn prepaid_zero_is_no_credit_and_the_authorisation_is_released() {
    let mut h = Harness::new(prepaid_cfg());
    let r = h.prepaid_init(call("c1").prepaid(true), Ok(Authorisation::prepaid(0)));
    assert_eq!(r, InitReply::NoCredit);
    let debits = h.take_debits();
    assert_eq!(debits.len(), 1);
    assert_eq!(debits[0].1.duration, 0);
    assert_eq!(debits[0].1.call_id.as_str(), "c1");
}

#[test]
fn prepaid_number_is_the_limit_capped_by_prepaid_limit() {
    let mut h = Harness::new(EngineConfig {
        prepaid_limit: Some(3600),
        ..Default::default()
    });
    assert_eq!(
        h.prepaid_init(call("c1").prepaid(true), Ok(Authorisation::prepaid(6000))),
        InitReply::Limited
    );
    assert_eq!(h.engine.session("c1").unwrap().limit, Some(3600));
}

#[test]
fn prepaid_cap_is_prepaid_limit_else_limit_else_36000() {
    let mut h = Harness::new(EngineConfig::default());
    h.init(call("c1").prepaid(true));
    assert_eq!(h.take_authorisations()[0].1.max_duration, 36000);
    let mut h = Harness::new(EngineConfig {
        limit: Some(7200),
        ..Default::default()
    });
    h.init(call("c1").prepaid(true));
    assert_eq!(h.take_authorisations()[0].1.max_duration, 7200);
    let mut h = Harness::new(EngineConfig {
        limit: Some(7200),
        prepaid_limit: Some(100),
        ..Default::default()
    });
    h.init(call("c1").prepaid(true));
    assert_eq!(h.take_authorisations()[0].1.max_duration, 100);
}

#[test]
fn prepaid_none_gets_the_fixed_limit() {
    let mut h = Harness::new(EngineConfig {
        limit: Some(900),
        ..Default::default()
    });
    let none = Ok(Authorisation {
        limit: RatedLimit::Unlimited,
        account: Some(AccountType::Prepaid),
    });
    assert_eq!(
        h.prepaid_init(call("c1").prepaid(true), none.clone()),
        InitReply::Limited
    );
    assert_eq!(h.engine.session("c1").unwrap().limit, Some(900));
    let mut h = Harness::new(EngineConfig::default());
    assert_eq!(
        h.prepaid_init(call("c1").prepaid(true), none),
        InitReply::NoLimit
    );
}

#[test]
fn prepaid_call_on_a_postpaid_account_is_a_configuration_mismatch_error() {
    let mut h = Harness::new(prepaid_cfg());
    let r = h.prepaid_init(
        call("c1").prepaid(true),
        Ok(Authorisation {
            limit: RatedLimit::Unlimited,
            account: Some(AccountType::Postpaid),
        }),
    );
    assert_eq!(r, InitReply::Error);
    assert!(h.engine.is_empty());
}

#[test]
fn non_prepaid_sessions_never_ask_the_rating_engine() {
    let mut h = Harness::fixed(Some(60));
    h.init_now(call("c1").prepaid(false));
    h.init_now(call("c2"));
    assert!(h.take_authorisations().is_empty());
}

#[test]
fn rating_failure_rejects_by_default() {
    for err in [
        RatingError::Timeout,
        RatingError::Unreachable("down".into()),
        RatingError::BadReply("garbage".into()),
    ] {
        let mut h = Harness::new(prepaid_cfg());
        assert_eq!(
            h.prepaid_init(call("c1").prepaid(true), Err(err.clone())),
            InitReply::Error,
            "{err}"
        );
        assert!(h.engine.is_empty());
    }
}

#[test]
fn rating_failure_can_fail_open_with_the_fallback_limit() {
    let mut h = Harness::new(EngineConfig {
        rating_failure: RatingFailurePolicy::Allow(120),
        ..Default::default()
    });
    let r = h.prepaid_init(call("c1").prepaid(true), Err(RatingError::Timeout));
    assert_eq!(r, InitReply::Limited);
    assert_eq!(h.engine.session("c1").unwrap().limit, Some(120));
}

#[test]
fn rating_timeout_releases_what_the_engine_may_have_recorded() {
    let mut h = Harness::new(prepaid_cfg());
    h.prepaid_init(call("c1").prepaid(true), Err(RatingError::Timeout));
    let d = h.take_debits();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].1.duration, 0);
}

// ---- start ------------------------------------------------------------------

#[test]
fn start_of_an_unknown_call_is_not_found() {
    let mut h = Harness::fixed(Some(60));
    assert_eq!(h.start("nope", None), Found::NotFound);
}

#[test]
fn start_arms_the_timer_from_the_answer_not_from_init() {
    let mut h = Harness::fixed(Some(60));
    h.init_now(call("c1"));
    h.advance_secs(20);
    assert_eq!(h.start("c1", Some(DialogId::new(1, 2))), Found::Ok);
    assert_eq!(h.deadline_of("c1"), Some(h.now.plus_secs(60)));
    assert_eq!(
        h.engine.session("c1").unwrap().dialog_id,
        Some(DialogId::new(1, 2))
    );
}

#[test]
fn repeated_start_changes_nothing() {
    let mut h = Harness::fixed(Some(60));
    h.init_now(call("c1"));
    h.start("c1", Some(DialogId::new(1, 2)));
    let before = h.engine.session("c1").unwrap().clone();
    h.advance_secs(10);
    assert_eq!(h.start("c1", Some(DialogId::new(3, 4))), Found::Ok);
    assert_eq!(h.engine.session("c1").unwrap(), &before);
}

#[test]
fn prepaid_start_rerates_and_resets_every_in_progress_sibling() {
    let mut h = Harness::new(prepaid_cfg());
    h.prepaid_init(call("c1").prepaid(true), Ok(Authorisation::prepaid(6000)));
    h.start("c1", None);
    let reauth = h.take_authorisations();
    assert_eq!(reauth.len(), 1);
    assert!(reauth[0].1.connected);
    h.authorised(reauth[0].0, Ok(Authorisation::prepaid(6000)));
    h.advance_secs(3);
    h.prepaid_init(call("c2").prepaid(true), Ok(Authorisation::prepaid(2998)));
    h.start("c2", None);
    let reauth = h.take_authorisations();
    h.authorised(reauth[0].0, Ok(Authorisation::prepaid(2998)));
    // Both now end 2998 s from now: they share one balance.
    assert_eq!(h.deadline_of("c1"), Some(h.now.plus_secs(2998)));
    assert_eq!(h.deadline_of("c2"), Some(h.now.plus_secs(2998)));
    assert_eq!(h.engine.session("c1").unwrap().limit, Some(3001));
}

#[test]
fn prepaid_start_locked_or_none_answer_changes_nothing() {
    for answer in [RatedLimit::Locked, RatedLimit::Unlimited] {
        let mut h = Harness::new(prepaid_cfg());
        h.prepaid_init(call("c1").prepaid(true), Ok(Authorisation::prepaid(600)));
        h.start("c1", None);
        let before = h.deadline_of("c1");
        let reauth = h.take_authorisations();
        h.authorised(
            reauth[0].0,
            Ok(Authorisation {
                limit: answer,
                account: Some(AccountType::Prepaid),
            }),
        );
        assert_eq!(h.deadline_of("c1"), before);
    }
}

#[test]
fn shared_limit_reset_skips_pending_and_postpaid_sessions_of_the_party() {
    let mut h = Harness::new(EngineConfig {
        limit: Some(5000),
        ..Default::default()
    });
    h.prepaid_init(call("c1").prepaid(true), Ok(Authorisation::prepaid(6000)));
    h.start("c1", None);
    h.take_authorisations();
    h.init_now(call("post").prepaid(false));
    h.start("post", None);
    h.prepaid_init(call("pend").prepaid(true), Ok(Authorisation::prepaid(6000)));
    h.prepaid_init(call("c2").prepaid(true), Ok(Authorisation::prepaid(6000)));
    h.start("c2", None);
    let reauth = h.take_authorisations();
    h.authorised(reauth[0].0, Ok(Authorisation::prepaid(100)));
    assert_eq!(h.deadline_of("c1"), Some(h.now.plus_secs(100)));
    assert_eq!(h.deadline_of("post"), Some(h.now.plus_secs(5000)));
    assert_eq!(h.state_of("pend"), Some(SessionState::Pending));
}

// ---- parallel prepaid sessions -----------------------------------------------

fn started_prepaid(h: &mut Harness, id: &str, limit: u64) {
    h.prepaid_init(call(id).prepaid(true), Ok(Authorisation::prepaid(limit)));
    h.start(id, None);
    let reauth = h.take_authorisations();
    h.authorised(reauth[0].0, Ok(Authorisation::prepaid(limit)));
}

#[test]
fn two_parallel_prepaid_sessions_reset_at_the_debit_reply_of_the_first() {
    let mut h = Harness::new(prepaid_cfg());
    started_prepaid(&mut h, "c1", 6000);
    h.advance_secs(3);
    started_prepaid(&mut h, "c2", 2998);
    h.advance_secs(60);
    assert_eq!(h.stop("c1"), Found::Ok);
    let debits = h.take_debits();
    assert_eq!(debits.len(), 1);
    assert_eq!(debits[0].1.duration, 63);
    // The second continues on what is left, per the DebitBalance reply.
    h.debited(debits[0].0, debited(Some(5000)));
    assert_eq!(h.deadline_of("c2"), Some(h.now.plus_secs(5000)));
    assert_eq!(h.engine.debits_owed(), 0);
}

#[test]
fn three_parallel_prepaid_sessions_reset_at_start_and_each_debit_reply() {
    let mut h = Harness::new(prepaid_cfg());
    started_prepaid(&mut h, "c1", 6000);
    h.advance_secs(10);
    started_prepaid(&mut h, "c2", 2990);
    h.advance_secs(10);
    started_prepaid(&mut h, "c3", 1990);
    for id in ["c1", "c2", "c3"] {
        assert_eq!(
            h.deadline_of(id),
            Some(h.now.plus_secs(1990)),
            "{id} reset at the third start"
        );
    }
    h.advance_secs(100);
    h.stop("c2");
    let d = h.take_debits();
    h.debited(d[0].0, debited(Some(2800)));
    assert_eq!(h.deadline_of("c1"), Some(h.now.plus_secs(2800)));
    assert_eq!(h.deadline_of("c3"), Some(h.now.plus_secs(2800)));
    h.advance_secs(100);
    h.stop("c1");
    let d = h.take_debits();
    assert_eq!(d[0].1.duration, 220);
    h.debited(d[0].0, debited(Some(5500)));
    assert_eq!(h.deadline_of("c3"), Some(h.now.plus_secs(5500)));
}

#[test]
fn parallel_sessions_expire_together_and_each_debits_its_own_limit() {
    let mut h = Harness::new(prepaid_cfg());
    started_prepaid(&mut h, "c1", 100);
    h.advance_secs(10);
    started_prepaid(&mut h, "c2", 50);
    h.advance_secs(50);
    let ends = h.take_ends();
    assert_eq!(ends.len(), 2);
    let debits = h.take_debits();
    let mut durations: Vec<(String, u64)> = debits
        .iter()
        .map(|(_, d)| (d.call_id.to_string(), d.duration))
        .collect();
    durations.sort();
    assert_eq!(durations, vec![("c1".into(), 60), ("c2".into(), 50)]);
}

// ---- stop -------------------------------------------------------------------

#[test]
fn stop_of_an_unknown_call_is_not_found() {
    let mut h = Harness::fixed(Some(60));
    assert_eq!(h.stop("nope"), Found::NotFound);
}

#[test]
fn stop_debits_whole_seconds_from_the_answer() {
    let mut h = Harness::new(prepaid_cfg());
    started_prepaid(&mut h, "c1", 600);
    h.advance_millis(42_999);
    assert_eq!(h.stop("c1"), Found::Ok);
    let d = h.take_debits();
    assert_eq!(d[0].1.duration, 42, "floored");
    assert!(h.engine.is_empty());
}

#[test]
fn unanswered_prepaid_session_is_released_with_duration_zero() {
    let mut h = Harness::new(prepaid_cfg());
    h.prepaid_init(call("c1").prepaid(true), Ok(Authorisation::prepaid(600)));
    h.advance_secs(5);
    assert_eq!(h.stop("c1"), Found::Ok);
    assert_eq!(h.take_debits()[0].1.duration, 0);
}

#[test]
fn stop_of_a_non_prepaid_session_debits_nothing() {
    let mut h = Harness::fixed(Some(600));
    h.init_now(call("c1"));
    h.start("c1", None);
    h.advance_secs(30);
    assert_eq!(h.stop("c1"), Found::Ok);
    assert!(h.take_debits().is_empty());
}

// ---- expiry -----------------------------------------------------------------

#[test]
fn expiry_ends_the_dialog_and_debits_exactly_the_limit() {
    let mut h = Harness::new(prepaid_cfg());
    started_prepaid(&mut h, "c1", 7200);
    h.engine.session("c1").unwrap();
    h.advance_secs(7200 + 5);
    let ends = h.take_ends();
    assert_eq!(ends.len(), 1);
    assert_eq!(ends[0].call_id.as_str(), "c1");
    let d = h.take_debits();
    assert_eq!(d.len(), 1);
    assert_eq!(
        d[0].1.duration, 7200,
        "exactly the limit, not the time the BYEs took"
    );
    assert_eq!(h.state_of("c1"), Some(SessionState::Ending));
}

#[test]
fn expiry_sends_the_dialog_id_from_start() {
    let mut h = Harness::fixed(Some(3));
    h.init_now(call("c1"));
    h.start("c1", Some(DialogId::parse("11111181033451").unwrap()));
    h.advance_secs(3);
    let ends = h.take_ends();
    assert_eq!(ends[0].dialog_id, Some(DialogId::new(0xa1b, 0x5ff9feb)));
}

#[test]
fn stop_after_expiry_is_not_found_and_forgets_the_session() {
    let mut h = Harness::fixed(Some(3));
    h.init_now(call("c1"));
    h.start("c1", None);
    h.advance_secs(3);
    assert_eq!(h.take_ends().len(), 1);
    assert_eq!(h.stop("c1"), Found::NotFound);
    assert!(h.engine.is_empty());
    // The proxy's late confirmation changes nothing.
    h.dialog_ended("c1", Ok(EndOutcome::Ended));
    assert!(h.engine.is_empty());
}

#[test]
fn session_is_visible_as_ending_until_the_proxy_confirms() {
    let mut h = Harness::fixed(Some(3));
    h.init_now(call("c1"));
    h.start("c1", None);
    h.advance_secs(3);
    assert_eq!(h.list(None)[0].state, SessionState::Ending);
    h.dialog_ended("c1", Ok(EndOutcome::Ended));
    assert!(h.list(None).is_empty());
}

#[test]
fn failed_dialog_end_is_kept_as_end_failed_and_retried_with_backoff() {
    let mut h = Harness::fixed(Some(3));
    h.init_now(call("c1"));
    h.start("c1", None);
    h.advance_secs(3);
    h.take_ends();
    h.dialog_ended("c1", Err(SignallingError::Timeout));
    assert_eq!(h.state_of("c1"), Some(SessionState::EndFailed));
    assert_eq!(h.list(None)[0].state, SessionState::EndFailed);
    h.advance_millis(999);
    assert!(h.take_ends().is_empty());
    h.advance_millis(1);
    assert_eq!(h.take_ends().len(), 1, "retried after 1 s");
    h.dialog_ended("c1", Err(SignallingError::Timeout));
    h.advance_millis(1999);
    assert!(h.take_ends().is_empty());
    h.advance_millis(1);
    assert_eq!(h.take_ends().len(), 1, "then after 2 s");
    h.dialog_ended("c1", Ok(EndOutcome::NotFound));
    assert!(h.engine.is_empty());
}

#[test]
fn a_two_hour_call_expires_at_exactly_two_hours() {
    let mut h = Harness::fixed(Some(7200));
    h.init_now(call("c1"));
    h.start("c1", None);
    let answered = h.now;
    h.advance_secs(7199);
    assert!(h.take_ends().is_empty());
    h.advance_secs(1);
    assert_eq!(h.take_ends().len(), 1);
    assert_eq!(h.now, answered.plus_secs(7200));
}

// ---- monitor ----------------------------------------------------------------

#[test]
fn unanswered_session_is_released_after_the_setup_timeout() {
    let mut h = Harness::new(prepaid_cfg());
    h.prepaid_init(call("c1").prepaid(true), Ok(Authorisation::prepaid(600)));
    h.advance_secs(89);
    assert_eq!(h.engine.len(), 1);
    h.advance_secs(1);
    assert!(h.engine.is_empty());
    assert!(h.take_ends().is_empty(), "no BYE for an unanswered call");
    assert_eq!(h.take_debits()[0].1.duration, 0, "released at no charge");
}

#[test]
fn setup_timeout_is_configurable() {
    let mut h = Harness::new(EngineConfig {
        limit: Some(60),
        setup_timeout: Duration::from_secs(10),
        ..Default::default()
    });
    h.init_now(call("c1"));
    h.advance_secs(10);
    assert!(h.engine.is_empty());
}

#[test]
fn answered_session_without_limit_is_ended_as_stale_after_24_hours() {
    let mut h = Harness::fixed(None);
    assert_eq!(h.init_now(call("c1").call_limit(5)), InitReply::Limited);
    h.start("c1", None);
    h.advance_secs(24 * 3600 - 1);
    assert!(h.take_ends().is_empty());
    h.advance_secs(1);
    assert_eq!(h.take_ends().len(), 1);
    assert_eq!(h.state_of("c1"), Some(SessionState::Ending));
}

#[test]
fn stale_timeout_is_configurable() {
    let mut h = Harness::new(EngineConfig {
        stale_timeout: Duration::from_secs(3600),
        ..Default::default()
    });
    h.init_now(call("c1").call_limit(5));
    h.start("c1", None);
    h.advance_secs(3600);
    assert_eq!(h.take_ends().len(), 1);
}

// ---- admin ------------------------------------------------------------------

#[test]
fn list_shows_every_session_with_state_limit_elapsed_and_remaining() {
    let mut h = Harness::fixed(Some(600));
    h.init_now(call_from("c1", "alice"));
    h.init_now(call_from("c2", "bob"));
    h.start("c2", None);
    h.advance_secs(60);
    let l = h.list(None);
    assert_eq!(l.len(), 2);
    assert_eq!(l[0].call_id.as_str(), "c1");
    assert_eq!(l[0].state, SessionState::Pending);
    assert_eq!(l[1].state, SessionState::InProgress);
    assert_eq!(l[1].user, "bob@example.com");
    assert_eq!(l[1].elapsed, Some(60));
    assert_eq!(l[1].remaining, Some(540));
    assert_eq!(l[1].limit, Some(600));
}

#[test]
fn list_filters_by_user_prefix() {
    let mut h = Harness::fixed(Some(600));
    h.init_now(call_from("c1", "alice"));
    h.init_now(call_from("c2", "bob"));
    let l = h.list(Some("bob"));
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].call_id.as_str(), "c2");
    assert!(h.list(Some("carol")).is_empty());
}

#[test]
fn show_gives_every_field_of_one_session_or_nothing() {
    let mut h = Harness::fixed(Some(600));
    h.init_now(call("c1").token("tok"));
    match h.request(Request::Show {
        call_id: CallId::new("c1"),
    }) {
        Some(Reply::Session(Some(s))) => {
            assert_eq!(s.token.as_deref(), Some("tok"));
            assert_eq!(s.ruri, "sip:0031201234567@example.com");
            assert_eq!(s.from, "\"Alice\" <sip:alice@example.com>");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        h.request(Request::Show {
            call_id: CallId::new("x")
        }),
        Some(Reply::Session(None))
    );
}

#[test]
fn terminate_ends_the_dialog_now_and_debits_the_elapsed_time() {
    let mut h = Harness::new(prepaid_cfg());
    started_prepaid(&mut h, "c1", 600);
    h.advance_secs(42);
    assert_eq!(h.terminate("c1"), Found::Ok);
    assert_eq!(h.take_ends().len(), 1);
    assert_eq!(h.take_debits()[0].1.duration, 42);
    assert_eq!(h.terminate("nope"), Found::NotFound);
}

// ---- debits -----------------------------------------------------------------

#[test]
fn debit_without_an_answer_is_retried_until_the_engine_answers_exactly_once() {
    let mut h = Harness::new(prepaid_cfg());
    started_prepaid(&mut h, "c1", 600);
    h.advance_secs(10);
    h.stop("c1");
    let d = h.take_debits();
    h.debited(d[0].0, Err(RatingError::Unreachable("down".into())));
    assert_eq!(h.engine.debits_owed(), 1);
    assert_eq!(
        h.store.snapshot().debits.len(),
        1,
        "the store sees the owed debit"
    );
    h.advance_secs(1);
    let again = h.take_debits();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].1, d[0].1, "same debit, same Call-ID and duration");
    h.debited(again[0].0, debited(None));
    assert_eq!(h.engine.debits_owed(), 0);
    assert!(h.store.snapshot().debits.is_empty());
    h.advance_secs(600);
    assert!(h.take_debits().is_empty(), "never sent again");
}

#[test]
fn failed_debit_is_logged_and_not_retried() {
    let mut h = Harness::new(prepaid_cfg());
    started_prepaid(&mut h, "c1", 600);
    h.stop("c1");
    let d = h.take_debits();
    h.debited(
        d[0].0,
        Ok(DebitOutcome::Failed {
            reason: "Failed".into(),
        }),
    );
    assert_eq!(h.engine.debits_owed(), 0);
    h.advance_secs(120);
    assert!(h.take_debits().is_empty());
}

#[test]
fn debits_go_out_in_the_order_sessions_ended_even_after_an_outage() {
    let mut h = Harness::new(EngineConfig {
        debit_window: 1,
        ..prepaid_cfg()
    });
    for id in ["c1", "c2", "c3"] {
        started_prepaid(&mut h, id, 600);
    }
    h.advance_secs(5);
    h.stop("c2");
    h.stop("c3");
    h.stop("c1");
    let first = h.take_debits();
    assert_eq!(first.len(), 1, "window of one");
    assert_eq!(first[0].1.call_id.as_str(), "c2");
    h.debited(first[0].0, Err(RatingError::Timeout));
    assert!(h.take_debits().is_empty(), "paused during the outage");
    let mut order = Vec::new();
    for _ in 0..10 {
        h.advance_secs(2);
        for (seq, d) in h.take_debits() {
            order.push(d.call_id.to_string());
            h.debited(seq, debited(None));
        }
    }
    assert_eq!(order, vec!["c2", "c3", "c1"]);
}

#[test]
fn owed_debits_and_sessions_are_in_the_store_before_replies() {
    let mut h = Harness::fixed(Some(600));
    h.init_now(call("c1"));
    assert_eq!(h.store.snapshot().sessions.len(), 1);
    h.start("c1", None);
    assert_eq!(
        h.store.snapshot().sessions[0].state,
        SessionState::InProgress
    );
    h.stop("c1");
    assert!(h.store.snapshot().sessions.is_empty());
}

// ---- restart ----------------------------------------------------------------

#[test]
fn restore_rearms_timers_by_the_wall_clock() {
    let mut h = Harness::fixed(Some(600));
    h.init_now(call("c1"));
    h.start("c1", None);
    let deadline = h.deadline_of("c1").unwrap();
    let snapshot = h.store.snapshot();
    // The daemon is down for 100 s.
    let mut h2 = Harness::fixed(Some(600));
    h2.now = h.now.plus_secs(100);
    h2.engine.restore(h2.now, snapshot);
    assert_eq!(h2.deadline_of("c1"), Some(deadline));
    h2.advance_secs(499);
    assert!(h2.take_ends().is_empty());
    h2.advance_secs(1);
    assert_eq!(h2.take_ends().len(), 1);
}

#[test]
fn sessions_that_expired_while_down_are_ended_at_once_and_debited_the_limit() {
    let mut h = Harness::new(prepaid_cfg());
    started_prepaid(&mut h, "c1", 60);
    let snapshot = h.store.snapshot();
    let mut h2 = Harness::new(prepaid_cfg());
    h2.now = h.now.plus_secs(3600);
    h2.engine.restore(h2.now, snapshot);
    h2.advance_millis(0);
    assert_eq!(h2.take_ends().len(), 1);
    assert_eq!(h2.take_debits()[0].1.duration, 60);
}

#[test]
fn unanswered_sessions_past_the_setup_timeout_are_released_at_restore() {
    let mut h = Harness::new(prepaid_cfg());
    h.prepaid_init(call("c1").prepaid(true), Ok(Authorisation::prepaid(600)));
    let snapshot = h.store.snapshot();
    let mut h2 = Harness::new(prepaid_cfg());
    h2.now = h.now.plus_secs(300);
    h2.engine.restore(h2.now, snapshot);
    h2.advance_millis(0);
    assert!(h2.engine.is_empty());
    assert_eq!(h2.take_debits()[0].1.duration, 0);
}

#[test]
fn owed_debits_survive_a_restart_and_go_out_in_order() {
    let mut h = Harness::new(prepaid_cfg());
    started_prepaid(&mut h, "c1", 600);
    started_prepaid(&mut h, "c2", 600);
    h.advance_secs(30);
    h.stop("c1");
    h.stop("c2");
    h.take_debits(); // sent, never answered: the daemon dies
    let snapshot = h.store.snapshot();
    assert_eq!(snapshot.debits.len(), 2);
    let mut h2 = Harness::new(prepaid_cfg());
    h2.now = h.now.plus_secs(5);
    h2.engine.restore(h2.now, snapshot);
    h2.pending
        .extend(std::iter::from_fn(|| h2.engine.poll_effect()));
    let d = h2.take_debits();
    let ids: Vec<&str> = d.iter().map(|(_, r)| r.call_id.as_str()).collect();
    assert_eq!(ids, vec!["c1", "c2"]);
    assert!(d.iter().all(|(_, r)| r.duration == 30));
}

#[test]
fn sessions_whose_dialog_ended_while_down_are_reconciled_and_debited() {
    let mut h = Harness::new(prepaid_cfg());
    started_prepaid(&mut h, "gone", 600);
    started_prepaid(&mut h, "live", 600);
    h.advance_secs(50);
    let down_since = h.now;
    let snapshot = h.store.snapshot();
    let mut h2 = Harness::new(prepaid_cfg());
    h2.now = h.now.plus_secs(100);
    h2.engine.restore(h2.now, snapshot);
    h2.engine
        .reconcile(h2.now, &[CallId::new("live")], down_since);
    h2.pending
        .extend(std::iter::from_fn(|| h2.engine.poll_effect()));
    assert!(h2.engine.session("gone").is_none());
    assert!(h2.engine.session("live").is_some());
    let d = h2.take_debits();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].1.call_id.as_str(), "gone");
    assert_eq!(d[0].1.duration, 50, "the time it is known to have run");
}

// ---- scale: one timer structure ------------------------------------------------

#[test]
fn one_hundred_thousand_sessions_inserted_cancelled_and_expired() {
    let mut h = Harness::fixed(Some(60));
    let n = 100_000;
    for i in 0..n {
        let id = format!("call-{i}");
        assert_eq!(
            h.init_now(call_from(&id, &format!("u{i}"))),
            InitReply::Limited
        );
        h.start(&id, Some(DialogId::new(i, i)));
        if i % 1000 == 0 {
            h.advance_millis(1);
        }
    }
    // Half are hung up by their users.
    for i in (0..n).step_by(2) {
        assert_eq!(h.stop(&format!("call-{i}")), Found::Ok);
    }
    assert_eq!(h.engine.len(), (n / 2) as usize);
    h.advance_secs(61);
    let ends = h.take_ends();
    assert_eq!(
        ends.len(),
        (n / 2) as usize,
        "every other session expired exactly once"
    );
    assert!(ends.iter().all(|d| d.dialog_id.unwrap().h_entry % 2 == 1));
    for d in &ends {
        h.dialog_ended(d.call_id.as_str(), Ok(EndOutcome::Ended));
    }
    assert!(h.engine.is_empty());
    assert_eq!(h.engine.poll_timeout(), None, "no timer left behind");
}

#[test]
fn a_debit_the_engine_answers_with_an_error_is_retried_alone_without_holding_up_others() {
    let mut h = Harness::new(EngineConfig {
        debit_window: 4,
        ..prepaid_cfg()
    });
    started_prepaid(&mut h, "bad", 600);
    started_prepaid(&mut h, "good", 600);
    h.advance_secs(5);
    h.stop("bad");
    let d = h.take_debits();
    h.debited(
        d[0].0,
        Err(RatingError::Engine("Error: bad parameter".into())),
    );
    h.stop("good");
    let d = h.take_debits();
    assert_eq!(d.len(), 1, "the next debit is not held up");
    assert_eq!(d[0].1.call_id.as_str(), "good");
    h.debited(d[0].0, debited(None));
    h.advance_secs(1);
    let again = h.take_debits();
    assert_eq!(
        again.len(),
        1,
        "the failing one is retried after its backoff"
    );
    assert_eq!(again[0].1.call_id.as_str(), "bad");
}

#[test]
fn a_garbage_rating_answer_releases_the_authorisation() {
    let mut h = Harness::new(prepaid_cfg());
    h.prepaid_init(
        call("c1").prepaid(true),
        Err(RatingError::BadReply("xx".into())),
    );
    assert_eq!(h.take_debits()[0].1.duration, 0);
    let mut h = Harness::new(prepaid_cfg());
    h.prepaid_init(
        call("c1").prepaid(true),
        Err(RatingError::Unreachable("refused".into())),
    );
    assert!(
        h.take_debits().is_empty(),
        "never reached the engine: nothing to release"
    );
}

#[test]
fn single_debit_retries_wait_for_a_global_pause_without_spinning() {
    let mut h = Harness::new(EngineConfig {
        debit_window: 4,
        ..prepaid_cfg()
    });
    started_prepaid(&mut h, "a", 600);
    started_prepaid(&mut h, "b", 600);
    h.advance_secs(5);
    h.stop("a");
    h.stop("b");
    let d = h.take_debits();
    assert_eq!(d.len(), 2);
    h.debited(d[0].0, Err(RatingError::Engine("Error: x".into())));
    h.debited(d[1].0, Err(RatingError::Timeout));
    // Past the single retry time but inside the pause: nothing is due.
    let mut wakeups = 0;
    while let Some(next) = h.engine.poll_timeout() {
        wakeups += 1;
        assert!(wakeups < 10, "the engine would spin at {next:?}");
        h.now = next;
        h.engine.handle_timeout(next);
        assert!(
            h.engine.poll_timeout().is_none_or(|t| t > next),
            "due again at once"
        );
    }
    h.pending
        .extend(std::iter::from_fn(|| h.engine.poll_effect()));
    assert_eq!(
        h.take_debits().len(),
        2,
        "both retried once the pause is over"
    );
}

#[test]
fn a_pending_session_answered_while_the_daemon_was_down_is_timed_from_its_answer() {
    let mut h = Harness::new(prepaid_cfg());
    h.prepaid_init(call("c1").prepaid(true), Ok(Authorisation::prepaid(600)));
    let snapshot = h.store.snapshot();
    let answered = h.now.plus_secs(2);
    let mut h2 = Harness::new(prepaid_cfg());
    h2.now = h.now.plus_secs(30);
    h2.engine.restore(h2.now, snapshot);
    let live = [LiveDialog {
        call_id: CallId::new("c1"),
        dialog_id: Some(DialogId::new(5, 6)),
        answered: Some(answered),
    }];
    h2.engine.reconcile_dialogs(h2.now, &live, h.now);
    assert_eq!(h2.state_of("c1"), Some(SessionState::InProgress));
    assert_eq!(h2.deadline_of("c1"), Some(answered.plus_secs(600)));
    h2.advance_secs(600);
    assert_eq!(h2.take_ends()[0].dialog_id, Some(DialogId::new(5, 6)));
    assert_eq!(h2.take_debits()[0].1.duration, 600);
}

#[test]
fn a_prepaid_call_too_long_to_rate_is_refused() {
    let mut h = Harness::new(prepaid_cfg());
    let long = format!("{}@h", "x".repeat(2000));
    assert_eq!(h.init(call(&long).prepaid(true)), Some(InitReply::Error));
    assert!(h.take_authorisations().is_empty());
    // Not prepaid: not rated, so not limited by the rating engine's buffer.
    let mut h = Harness::fixed(Some(60));
    assert_eq!(h.init_now(call(&long)), InitReply::Limited);
}

#[test]
fn a_debit_reply_shared_limit_is_capped_by_prepaid_limit() {
    let mut h = Harness::new(EngineConfig {
        prepaid_limit: Some(1000),
        ..Default::default()
    });
    started_prepaid(&mut h, "c1", 1000);
    started_prepaid(&mut h, "c2", 1000);
    h.stop("c1");
    let d = h.take_debits();
    h.debited(d[0].0, debited(Some(50_000)));
    assert_eq!(h.deadline_of("c2"), Some(h.now.plus_secs(1000)));
}

// ---- admin: paged list ------------------------------------------------------

fn page(h: &mut Harness, q: ListQuery) -> SessionPage {
    match h.request(Request::Page(q)) {
        Some(Reply::Page(p)) => p,
        other => panic!("unexpected reply {other:?}"),
    }
}

fn ids(p: &SessionPage) -> Vec<&str> {
    p.sessions.iter().map(|s| s.call_id.as_str()).collect()
}

#[test]
fn page_is_ordered_by_creation_then_call_id_like_list() {
    let mut h = Harness::fixed(Some(600));
    // Same creation time: Call-ID order breaks the tie.
    h.init_now(call_from("b", "alice"));
    h.init_now(call_from("a", "alice"));
    h.advance_secs(1);
    h.init_now(call_from("0", "bob"));
    h.advance_secs(1);
    h.init_now(call_from("c", "carol"));
    let p = page(&mut h, ListQuery::first(10));
    assert_eq!(ids(&p), ["a", "b", "0", "c"]);
    assert_eq!((p.total, p.matched), (4, 4));
    let listed: Vec<SessionInfo> = h.list(None);
    assert_eq!(p.sessions, listed);
}

#[test]
fn page_filters_by_user_state_kind_and_text() {
    let mut h = Harness::fixed(Some(600));
    h.init_now(call_from("c1", "alice"));
    h.init_now(call_from("c2", "bob"));
    h.start("c2", None);
    h.init_now(
        InitRequest::new(
            "C3-Needle@h",
            "<sip:carol@example.com>",
            "sip:dave@example.com",
        )
        .prepaid(false),
    );
    let q = |f: fn(&mut ListQuery)| {
        let mut q = ListQuery::first(100);
        f(&mut q);
        q
    };
    let p = page(&mut h, q(|q| q.user = Some("bob@".into())));
    assert_eq!((ids(&p), p.matched, p.total), (vec!["c2"], 1, 3));
    let p = page(
        &mut h,
        q(|q| q.states = Some(vec![SessionState::InProgress])),
    );
    assert_eq!(ids(&p), ["c2"]);
    let p = page(
        &mut h,
        q(|q| q.states = Some(vec![SessionState::Pending, SessionState::Ending])),
    );
    assert_eq!(ids(&p), ["C3-Needle@h", "c1"]);
    // Case-insensitive text in the Call-ID, From, R-URI or billing party.
    let p = page(&mut h, q(|q| q.text = Some("nEEdle".into())));
    assert_eq!(ids(&p), ["C3-Needle@h"]);
    let p = page(&mut h, q(|q| q.text = Some("DAVE".into())));
    assert_eq!(ids(&p), ["C3-Needle@h"]);
    let p = page(&mut h, q(|q| q.text = Some("alice@EXAMPLE".into())));
    assert_eq!(ids(&p), ["c1"]);
    let p = page(&mut h, q(|q| q.text = Some("nobody".into())));
    assert_eq!((p.sessions.len(), p.matched, p.total), (0, 0, 3));
    // Neither call is prepaid (postpaid or unknown).
    let p = page(&mut h, q(|q| q.prepaid = Some(true)));
    assert_eq!(p.matched, 0);
    let p = page(&mut h, q(|q| q.prepaid = Some(false)));
    assert_eq!(p.matched, 3);
}

#[test]
fn page_filters_prepaid_sessions() {
    let mut h = Harness::new(EngineConfig {
        limit: Some(600),
        ..Default::default()
    });
    h.prepaid_init(call("p1").prepaid(true), Ok(Authorisation::prepaid(100)));
    h.init_now(call("q1").prepaid(false));
    let p = page(
        &mut h,
        ListQuery {
            prepaid: Some(true),
            ..ListQuery::first(10)
        },
    );
    assert_eq!(ids(&p), ["p1"]);
    assert!(p.sessions[0].prepaid);
}

#[test]
fn offset_and_cursor_pages_walk_the_list_once_in_order() {
    let mut h = Harness::fixed(Some(600));
    for i in 0..57 {
        // Several sessions per millisecond, inserted out of Call-ID order.
        h.init_now(call(&format!("c{:02}", (i * 7) % 57)));
        if i % 5 == 4 {
            h.advance_millis(1);
        }
    }
    let all: Vec<String> = h.list(None).iter().map(|s| s.call_id.to_string()).collect();
    assert_eq!(all.len(), 57);
    // Offset paging.
    let mut by_offset = Vec::new();
    for offset in (0..60).step_by(10) {
        let p = page(
            &mut h,
            ListQuery {
                offset,
                ..ListQuery::first(10)
            },
        );
        assert_eq!(p.matched, 57);
        assert_eq!(p.sessions.len(), 10.min(57 - offset.min(57)));
        by_offset.extend(p.sessions.iter().map(|s| s.call_id.to_string()));
    }
    assert_eq!(by_offset, all);
    // Cursor paging.
    let mut by_cursor = Vec::new();
    let mut q = ListQuery::first(8);
    loop {
        let p = page(&mut h, q.clone());
        by_cursor.extend(p.sessions.iter().map(|s| s.call_id.to_string()));
        match p.sessions.last() {
            Some(last) if p.sessions.len() == q.limit => q = q.next_after(last),
            _ => break,
        }
    }
    assert_eq!(by_cursor, all);
    // Cursor and offset together; beyond the end is empty.
    let first = page(&mut h, ListQuery::first(3));
    let q = ListQuery {
        offset: 2,
        ..ListQuery::first(3).next_after(&first.sessions[2])
    };
    assert_eq!(ids(&page(&mut h, q)), all[5..8].to_vec());
    let p = page(
        &mut h,
        ListQuery {
            offset: 57,
            ..ListQuery::first(10)
        },
    );
    assert!(p.sessions.is_empty());
    assert_eq!(page(&mut h, ListQuery::first(0)).sessions.len(), 0);
}

#[test]
fn a_page_of_50_out_of_100000_sessions_is_exactly_50() {
    let mut h = Harness::fixed(Some(3600));
    for i in 0..100_000 {
        h.engine
            .handle(h.now, 0, Request::Init(call(&format!("bulk-{i:06}"))));
        if i % 1000 == 999 {
            h.advance_millis(1);
        }
    }
    while h.engine.poll_effect().is_some() {}
    let _ = h.engine.take_changes();
    assert_eq!(h.engine.len(), 100_000);
    let p = h.engine.page(
        h.now,
        &ListQuery {
            offset: 50_000,
            ..ListQuery::first(50)
        },
    );
    assert_eq!(
        (p.total, p.matched, p.sessions.len()),
        (100_000, 100_000, 50)
    );
    assert_eq!(p.sessions[0].call_id.as_str(), "bulk-050000");
    assert_eq!(p.sessions[49].call_id.as_str(), "bulk-050049");
    let p = h.engine.page(h.now, &ListQuery::first(50));
    assert_eq!(p.sessions.len(), 50);
    assert_eq!(p.sessions[49].call_id.as_str(), "bulk-000049");
}

#[test]
fn a_resent_init_whose_release_gets_no_answer_is_refused_not_rated_behind_it() {
    // Unanswered: refused at half the init budget, the release still owed.
    let mut h = Harness::new(prepaid_cfg());
    h.prepaid_init(
        call("c1").prepaid(true).token("t"),
        Ok(Authorisation::prepaid(600)),
    );
    let mut again = call("c1").prepaid(true).token("t");
    again.ruri = "sip:other@example.com".into();
    assert!(h.init(again.clone()).is_none());
    let token = h.last_token();
    let release = h.take_debits();
    assert_eq!(release.len(), 1, "the release goes out at once");
    h.advance_millis(225);
    assert_eq!(h.take_reply(token), Some(Reply::Init(InitReply::Error)));
    assert!(
        h.take_authorisations().is_empty(),
        "never rated behind the release"
    );
    assert_eq!(h.engine.debits_owed(), 1);
    // A release that fails: refused at once.
    let mut h = Harness::new(prepaid_cfg());
    h.prepaid_init(
        call("c1").prepaid(true).token("t"),
        Ok(Authorisation::prepaid(600)),
    );
    assert!(h.init(again).is_none());
    let token = h.last_token();
    let release = h.take_debits();
    h.debited(release[0].0, Err(RatingError::Timeout));
    assert_eq!(h.take_reply(token), Some(Reply::Init(InitReply::Error)));
    assert!(h.take_authorisations().is_empty());
}

#[test]
fn the_rerating_after_a_release_gets_what_is_left_of_the_init_budget() {
    let mut h = Harness::new(prepaid_cfg());
    h.prepaid_init(
        call("c1").prepaid(true).token("t"),
        Ok(Authorisation::prepaid(600)),
    );
    let mut again = call("c1").prepaid(true).token("t");
    again.ruri = "sip:other@example.com".into();
    h.init(again);
    let release = h.take_debits();
    h.advance_millis(100);
    h.debited(release[0].0, debited(None));
    let budget = h.pending.iter().find_map(|e| match e {
        callcontrol_core::engine::Effect::Authorise { budget, .. } => Some(*budget),
        _ => None,
    });
    assert_eq!(budget, Some(Duration::from_millis(350)));
}

// ---- the engine's own bookkeeping -------------------------------------------

/// Keeps every line logged, for the tests that check a line's text.
struct Captured(std::sync::Mutex<Vec<String>>);

impl log::Log for Captured {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Info
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            self.0.lock().unwrap().push(r.args().to_string());
        }
    }
    fn flush(&self) {}
}

static CAPTURED: Captured = Captured(std::sync::Mutex::new(Vec::new()));

/// The lines logged so far that end with `(call_id)`.
fn logged(call_id: &str) -> Vec<String> {
    if log::set_logger(&CAPTURED).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
    let end = format!("({call_id})");
    let lines = CAPTURED.0.lock().unwrap();
    lines
        .iter()
        .filter(|l| l.ends_with(&end))
        .cloned()
        .collect()
}

#[test]
fn a_call_logs_its_start_and_its_stop_with_their_durations() {
    let _ = logged("");
    let mut h = Harness::fixed(Some(600));
    assert_eq!(h.init_now(call_from("log-1", "Bob")), InitReply::Limited);
    assert_eq!(h.start("log-1", None), Found::Ok);
    h.advance_millis(12_345);
    assert_eq!(h.stop("log-1"), Found::Ok);
    assert_eq!(
        logged("log-1"),
        [
            "Call from Bob@example.com to sip:0031201234567@example.com started for maximum \
             600 seconds (log-1)",
            "Call from Bob@example.com to sip:0031201234567@example.com was stopped after 12 \
             seconds (log-1)",
        ]
    );
    let mut h = Harness::new(EngineConfig {
        limit: None,
        ..Default::default()
    });
    let mut req = call("log-2");
    req.call_limit = 5;
    assert_eq!(h.init_now(req), InitReply::Limited);
    assert_eq!(h.start("log-2", None), Found::Ok);
    h.advance_secs(3_601);
    assert_eq!(h.stop("log-2"), Found::Ok);
    assert_eq!(
        logged("log-2"),
        [
            "Call from alice@example.com to sip:0031201234567@example.com started (log-2)",
            "Call from alice@example.com to sip:0031201234567@example.com was stopped after \
             3601 seconds (log-2)",
        ]
    );
    assert_eq!(h.init_now(call("log-3")), InitReply::NoLimit);
    let mut h = Harness::fixed(Some(10_000_000_000));
    assert_eq!(h.init_now(call("log-3")), InitReply::Limited);
    assert_eq!(h.start("log-3", None), Found::Ok);
    assert_eq!(h.stop("log-3"), Found::Ok);
    assert_eq!(
        logged("log-3"),
        [
            "Call from alice@example.com to sip:0031201234567@example.com started for maximum \
             10000000000 seconds (log-3)",
            "Call from alice@example.com to sip:0031201234567@example.com was stopped after 0 \
             seconds (log-3)",
        ]
    );
}

#[test]
fn the_store_keeps_each_record_as_it_was_handed_over() {
    let mut e = Engine::new(EngineConfig {
        limit: Some(60),
        ..Default::default()
    });
    let t0 = Timestamp(1_000_000);
    e.handle(t0, 1, Request::Init(call("r1")));
    let after_init = e.take_changes();
    let [StoreChange::Session(pending)] = &after_init[..] else {
        panic!("{after_init:?}");
    };
    assert_eq!(pending.state, SessionState::Pending);
    let start = StartRequest {
        call_id: CallId::new("r1"),
        dialog_id: None,
    };
    e.handle(t0.plus_secs(1), 2, Request::Start(start));
    let after_start = e.take_changes();
    // A session the store has: only the fields that changed are sent.
    let [StoreChange::Update(update)] = &after_start[..] else {
        panic!("{after_start:?}");
    };
    // The record handed over at init did not change with the session.
    assert_eq!(pending.state, SessionState::Pending);
    assert_eq!(pending.answered, None);
    assert_eq!(update.state, SessionState::InProgress);
    assert_eq!(update.answered, Some(t0.plus_secs(1)));
    let mut running = (**pending).clone();
    update.apply_to(&mut running);
    assert_eq!(
        running,
        *e.session("r1").unwrap(),
        "record + update = session"
    );
    assert!(!e.has_changes());

    // Several changes of one session in a batch: one record, its last state.
    e.handle(t0, 3, Request::Init(call("r2")));
    e.handle(
        t0,
        4,
        Request::Stop {
            call_id: CallId::new("r2"),
        },
    );
    e.handle(t0, 5, Request::Init(call("r2")));
    e.handle(
        t0,
        6,
        Request::Stop {
            call_id: CallId::new("r1"),
        },
    );
    let batch = e.take_changes();
    assert_eq!(batch.len(), 2, "{batch:?}");
    assert!(matches!(&batch[0], StoreChange::Session(s) if s.call_id.as_str() == "r2"));
    assert_eq!(batch[1], StoreChange::RemoveSession(CallId::new("r1")));
    e.handle(
        t0,
        7,
        Request::Stop {
            call_id: CallId::new("r2"),
        },
    );
    e.handle(t0, 8, Request::Init(call("r2")));
    e.handle(
        t0,
        9,
        Request::Stop {
            call_id: CallId::new("r2"),
        },
    );
    assert_eq!(
        e.take_changes(),
        [StoreChange::RemoveSession(CallId::new("r2"))]
    );
}

#[test]
fn parties_that_come_and_go_are_counted_right() {
    let mut h = Harness::fixed(Some(60));
    for round in 0..3 {
        for i in 0..3000 {
            let mut req = call_from(&format!("p{round}-{i}"), &format!("u{i}"));
            req.call_limit = 1;
            assert_eq!(h.init_now(req), InitReply::Limited);
        }
        let mut again = call_from(&format!("p{round}-x"), "u7");
        again.call_limit = 1;
        assert_eq!(h.init_now(again), InitReply::CallLimitReached);
        for i in 0..3000 {
            assert_eq!(h.stop(&format!("p{round}-{i}")), Found::Ok);
        }
        let party = BillingParty::new("sip:u7@example.com");
        assert_eq!(h.engine.party_sessions(&party), 0);
    }
}

#[test]
fn a_party_with_many_calls_keeps_every_one_whatever_order_they_end_in() {
    // A trunk's account: many prepaid calls of one party in progress. Each
    // ends in a scrambled order, and each debit reply's shared limit still
    // reaches every call left, and only those.
    let n = 60;
    let mut h = Harness::new(prepaid_cfg());
    for i in 0..n {
        started_prepaid(&mut h, &format!("t{i}"), 6000);
    }
    let party = BillingParty::new("sip:alice@example.com");
    assert_eq!(h.engine.party_sessions(&party), n);
    let order: Vec<usize> = (0..n).map(|i| i * 37 % n).collect();
    for (ended, &i) in order.iter().enumerate() {
        h.advance_secs(1);
        assert_eq!(h.stop(&format!("t{i}")), Found::Ok);
        let d = h.take_debits();
        assert_eq!(d.len(), 1);
        let left = 6000 - ended as u64;
        h.debited(d[0].0, debited(Some(left)));
        assert_eq!(h.engine.party_sessions(&party), n - ended - 1);
        for &j in &order[ended + 1..] {
            assert_eq!(
                h.deadline_of(&format!("t{j}")),
                Some(h.now.plus_secs(left)),
                "t{j} after t{i} ended"
            );
        }
    }
}

#[test]
fn answered_calls_end_at_their_limit_whether_shorter_or_longer_than_the_setup_timeout() {
    let mut h = Harness::fixed(Some(3600));
    assert_eq!(h.init_now(call("long")), InitReply::Limited);
    let mut short = call("short");
    short.call_limit = 1;
    let mut cfg_short = Harness::fixed(Some(30));
    assert_eq!(cfg_short.init_now(short), InitReply::Limited);
    h.advance_secs(10);
    cfg_short.advance_secs(10);
    assert_eq!(h.start("long", None), Found::Ok);
    assert_eq!(cfg_short.start("short", None), Found::Ok);
    let answered = h.now;
    // Past the setup timeout: nothing happens to the answered call.
    h.advance_secs(100);
    assert_eq!(h.state_of("long"), Some(SessionState::InProgress));
    assert_eq!(h.engine.stats().timers_fired, 0);
    assert_eq!(h.deadline_of("long"), Some(answered.plus_secs(3600)));
    h.advance_millis(3_499_999);
    assert!(h.take_ends().is_empty());
    h.advance_millis(1);
    assert_eq!(h.take_ends().len(), 1, "ends exactly at its limit");
    assert_eq!(h.state_of("long"), Some(SessionState::Ending));
    let stats = h.engine.stats();
    assert_eq!(
        (stats.timers_fired, stats.expired, stats.timer_lateness_ms),
        (1, 1, 0)
    );
    // Shorter than the setup timeout: ends at its limit too.
    cfg_short.advance_millis(29_999);
    assert!(cfg_short.take_ends().is_empty());
    cfg_short.advance_millis(1);
    assert_eq!(cfg_short.take_ends().len(), 1);
    assert_eq!(cfg_short.engine.stats().timers_fired, 1);
    // A call not answered is released at the setup timeout.
    assert_eq!(h.init_now(call("never")), InitReply::Limited);
    h.advance_secs(89);
    assert_eq!(h.state_of("never"), Some(SessionState::Pending));
    h.advance_secs(1);
    assert_eq!(h.state_of("never"), None);
    assert_eq!(h.engine.stats().setup_timeouts, 1);
}

#[test]
fn a_restore_records_only_what_it_changed() {
    let config = EngineConfig {
        limit: Some(60),
        ..Default::default()
    };
    let mut e = Engine::new(config.clone());
    let t0 = Timestamp(1_000_000);
    for (token, id) in [(1, "p"), (2, "q"), (3, "r")] {
        e.handle(t0, token, Request::Init(call(id)));
    }
    for (token, id) in [(4, "q"), (5, "r")] {
        let start = StartRequest {
            call_id: CallId::new(id),
            dialog_id: None,
        };
        e.handle(t0, token, Request::Start(start));
    }
    let mut store = MemoryStore::new();
    store.apply(&e.take_changes()).unwrap();
    let mut snapshot = store.snapshot();
    // `r` was being ended when the daemon stopped.
    for s in &mut snapshot.sessions {
        if s.call_id.as_str() == "r" {
            s.state = SessionState::Ending;
        }
    }
    let mut restored = Engine::new(config);
    restored.restore(t0.plus_secs(5), snapshot);
    assert_eq!(restored.sessions().count(), 3);
    // Pending and answered sessions are in the store as they are; `r` is
    // now one whose end must be retried, and the store is told so.
    let changes = restored.take_changes();
    let [StoreChange::Update(u)] = &changes[..] else {
        panic!("{changes:?}");
    };
    assert_eq!(u.call_id.as_str(), "r");
    assert_eq!(u.state, SessionState::EndFailed);
}
