//! The signalling backend seam: how the engine has the proxy end a dialog
//! (OpenSIPS MI `dlg_end_dlg`, Kamailio RPC `dlg.end_dlg`).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::SignallingError;
use crate::types::{CallId, DialogId};

/// The dialog to end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DialogRef {
    /// The SIP Call-ID (also a fallback id on OpenSIPS ≥ 2.3).
    pub call_id: CallId,
    /// The dialog id from `start`; `None` for a call never answered.
    pub dialog_id: Option<DialogId>,
}

/// A dialog the proxy has, as listed for reconciliation after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveDialog {
    /// The SIP Call-ID.
    pub call_id: CallId,
    /// The dialog id, when the listing gives it.
    pub dialog_id: Option<DialogId>,
    /// When the dialog was confirmed (answered), when the listing says so.
    pub answered: Option<crate::types::Timestamp>,
}

/// How an end-dialog request went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndOutcome {
    /// The proxy ended the dialog (BYEs sent).
    Ended,
    /// The proxy does not know the dialog: it is already gone.
    NotFound,
}

/// The health of the proxy's management interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignallingHealth {
    /// Where it is (socket path or URL).
    pub address: String,
    /// Whether the last exchange succeeded.
    pub reachable: bool,
    /// The proxy version, when known.
    pub version: Option<String>,
}

/// A signalling backend. `end_dialog` does its own retries and fallbacks and
/// returns the final outcome; the engine logs failures and retries later.
///
/// ```
/// use callcontrol_core::signalling::*;
/// use callcontrol_core::error::SignallingError;
///
/// struct LogOnly;
///
/// #[async_trait::async_trait]
/// impl SignallingBackend for LogOnly {
///     async fn end_dialog(&self, d: &DialogRef) -> Result<EndOutcome, SignallingError> {
///         log::warn!("would end dialog {:?} ({})", d.dialog_id, d.call_id);
///         Ok(EndOutcome::Ended)
///     }
/// }
/// ```
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait SignallingBackend: Send + Sync + 'static {
    /// Ends the dialog: BYE to both ends (CANCEL when unanswered).
    async fn end_dialog(&self, dialog: &DialogRef) -> Result<EndOutcome, SignallingError>;

    /// The Call-IDs of the dialogs the proxy has now, for reconciliation after
    /// a restart; `Ok(None)` when the backend cannot list dialogs.
    async fn list_dialogs(&self) -> Result<Option<Vec<CallId>>, SignallingError> {
        Ok(None)
    }

    /// Like [`SignallingBackend::list_dialogs`], with each dialog's state
    /// when the proxy gives it: a call answered while the daemon was down
    /// (its `start` lost) is then timed from its real answer.
    async fn list_live_dialogs(&self) -> Result<Option<Vec<LiveDialog>>, SignallingError> {
        Ok(self.list_dialogs().await?.map(|ids| {
            ids.into_iter()
                .map(|call_id| LiveDialog {
                    call_id,
                    dialog_id: None,
                    answered: None,
                })
                .collect()
        }))
    }

    /// Health, for monitoring.
    fn health(&self) -> Option<SignallingHealth> {
        None
    }
}
