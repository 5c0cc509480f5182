//! The world file of a layer with several bases: what each base shows, merged.

use std::fs;
use std::path::PathBuf;

use super::{LayerJob, Outcome};
use crate::layers::store::{BuildKey, Layer};

/// Where Portage keeps the selected packages, relative to a root.
pub const WORLD: &str = "var/lib/portage/world";

/// World-file entries merged in order: each entry once, where first seen (B41).
pub fn merge_world<'a>(files: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for text in files {
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if !out.iter().any(|e| e == line) {
                out.push(line.to_owned());
            }
        }
    }
    out
}

/// The world file a stack of layer trees (topmost first) shows through a union: the
/// topmost layer's that has one, unless a whiteout of it or an opaque
/// `var/lib/portage` comes first.
pub fn world_in_stack(stack: &[PathBuf]) -> Option<String> {
    for layer in stack {
        let f = layer.join(WORLD);
        if let Ok(text) = fs::read_to_string(&f) {
            return Some(text);
        }
        let dir = layer.join("var/lib/portage");
        if dir.join(".wh.world").exists() || dir.join(".wh..wh..opq").exists() {
            return None;
        }
    }
    None
}

/// The world file to write into a layer with several bases (B41): each direct base
/// stack's world file, merged in base order, when that differs from what the
/// union of all of them would show (only the topmost base's). `None` otherwise.
pub(super) fn merged_world(
    job: &LayerJob<'_>,
    jobs: &[LayerJob<'_>],
    done: &[(Layer, Outcome)],
) -> Option<String> {
    if job.config.bases.len() < 2 {
        return None;
    }
    let root_of = |k: &BuildKey| {
        done.iter()
            .find(|(l, _)| &l.meta.key == k)
            .map(|(l, _)| l.root())
    };
    let stack = |top: &BuildKey, below: &[BuildKey]| -> Vec<PathBuf> {
        std::iter::once(top)
            .chain(below.iter().rev())
            .filter_map(root_of)
            .collect()
    };
    let views: Vec<String> = job
        .config
        .bases
        .iter()
        .filter_map(|b| jobs.iter().find(|j| j.config == b))
        .filter_map(|j| world_in_stack(&stack(&j.key, &j.lower_keys)))
        .collect();
    if views.len() < 2 {
        return None;
    }
    let merged = merge_world(views.iter().map(String::as_str));
    let lowers: Vec<PathBuf> = job.lower_keys.iter().rev().filter_map(root_of).collect();
    let shown = world_in_stack(&lowers).unwrap_or_default();
    (merge_world([shown.as_str()]) != merged).then(|| {
        let mut text = merged.join("\n");
        text.push('\n');
        text
    })
}
