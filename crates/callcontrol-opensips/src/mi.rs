//! The OpenSIPS MI client (stub).
/// Dialog id format.
pub enum DialogIdFormat {
    /** auto */
    Auto,
}
/// Transport.
pub enum MiTransport {
    /** datagram */
    Datagram,
}
/// Config.
pub struct MiConfig;
/// Client.
pub struct MiClient;
