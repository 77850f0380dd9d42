//! Server (stub).
/// Config.
pub struct ServerConfig;
/// Serve.
pub async fn serve() {}
