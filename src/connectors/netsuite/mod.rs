//! Placeholder for the NetSuite connector while it is being written on its
//! own branch; replaced by the real module when that branch is merged.
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Clone, serde::Deserialize, PartialEq)]
pub struct NetsuiteOptions {
    pub account_id: String,
}

impl NetsuiteOptions {
    pub fn validate(&self, _base: &Path) -> Vec<String> {
        vec!["the netsuite connector is not available in this build".into()]
    }
}

pub struct NetsuiteConnector;

impl NetsuiteConnector {
    pub fn new(
        _o: &NetsuiteOptions,
        _b: &Path,
        _bu: Arc<super::Budget>,
    ) -> Result<super::demo::DemoConnector, String> {
        Err("the netsuite connector is not available in this build".into())
    }
}
