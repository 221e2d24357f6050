//! placeholder
use crate::config::Config;
pub fn init_logging(_config: &Config) {}
pub async fn serve(_config: Config) -> anyhow::Result<()> {
    Ok(())
}
