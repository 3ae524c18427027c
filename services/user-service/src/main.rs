//! The user-service binary: logs, settings, build, run until SIGTERM or SIGINT.

use std::process::ExitCode;

use service_config::FromEnv;
use user_service::config::Settings;
use user_service::Application;

fn main() -> ExitCode {
    service_http::run_main("user-service", |shutdown| async {
        let settings = Settings::from_env()?;
        let app = Application::build(&settings).await?;
        Ok(app.run_until_stopped(shutdown).await?)
    })
}
