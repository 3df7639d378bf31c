//! Rule reload (SIGHUP and `POST /api/v1/reload`).

use crate::app::App;

/// Re-reads the config file and applies its rules.
pub async fn reload_from_file(_app: &App) -> Result<String, String> {
    Err("rule reload is not available yet".into())
}
