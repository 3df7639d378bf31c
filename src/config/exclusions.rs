//! `[exclusions]`: the new-exclusion ratio guard of reloads.

use super::raw::RawExclusions;
use super::{ExclusionsConfig, Problems};

pub(super) fn compile(ex: RawExclusions, p: &mut Problems<'_>) -> ExclusionsConfig {
    let max_new_exclusion_ratio = match &ex.max_new_exclusion_ratio {
        Some(v) => {
            let r = *v.get_ref();
            if !(0.0..=1.0).contains(&r) {
                p.at(
                    Some(v.span()),
                    "exclusions.max_new_exclusion_ratio",
                    format!("{r} is outside 0.0 ..= 1.0"),
                );
            }
            r
        }
        None => 0.2,
    };
    ExclusionsConfig {
        max_new_exclusion_ratio,
    }
}
