//! Reminder eligibility (placeholder until the reminders module lands).

#[derive(Debug, Clone, Default)]
pub struct RemindersConfig {}

impl RemindersConfig {
    pub fn from_toml(_v: &toml::Value) -> Result<Self, Vec<String>> {
        Ok(Self::default())
    }
}
