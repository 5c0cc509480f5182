//! Emerge command lines (with B47 and B58): always argv vectors, never
//! shell strings. Option names from `emerge_args`/`emerge_bools` have `_`
//! turned into `-`; bools listed as *plain* become a bare `--opt` (or nothing), the
//! others `--opt=y|n`.

/// `emerge`, or the crossdev wrapper `emerge-<target>`.
pub fn program(target: Option<&str>) -> String {
    match target {
        Some(t) => format!("emerge-{t}"),
        None => "emerge".to_string(),
    }
}

fn dashed(key: &str) -> String {
    key.replace('_', "-")
}

/// `--root R` and, with a config overlay, `--config-root R` (B47).
pub fn root_args(root: &str, config_root: bool) -> Vec<String> {
    let mut v = vec!["--root".to_string(), root.to_string()];
    if config_root {
        v.extend(["--config-root".to_string(), root.to_string()]);
    }
    v
}

/// `emerge_args` as `--key=value`, then `emerge_bools` in table order.
pub fn option_args(
    args: &[(String, String)],
    bools: &[(String, bool)],
    plain: &[String],
) -> Vec<String> {
    let mut v: Vec<String> = args
        .iter()
        .map(|(k, val)| format!("--{}={val}", dashed(k)))
        .collect();
    for (k, on) in bools {
        let k = dashed(k);
        if plain.iter().any(|p| dashed(p) == k) {
            if *on {
                v.push(format!("--{k}"));
            }
        } else {
            v.push(format!("--{k}={}", if *on { "y" } else { "n" }));
        }
    }
    v
}

/// What a layer's emerge, unmerge and depclean command lines are built from.
#[derive(Debug, Clone, Copy)]
pub struct LayerCommands<'a> {
    pub target: Option<&'a str>,
    /// `/builds/<buildname>`.
    pub root: &'a str,
    pub config_overlay: bool,
    pub args: &'a [(String, String)],
    pub bools: &'a [(String, bool)],
    pub plain: &'a [String],
    pub packages: &'a [String],
    pub unmerge: &'a [String],
    pub depclean: bool,
}

impl LayerCommands<'_> {
    fn base(&self) -> Vec<String> {
        let mut v = vec![program(self.target)];
        v.extend(root_args(self.root, self.config_overlay));
        v
    }

    /// Program, root, options, packages; `None` without packages.
    pub fn emerge(&self) -> Option<Vec<String>> {
        (!self.packages.is_empty()).then(|| {
            let mut v = self.base();
            v.extend(option_args(self.args, self.bools, self.plain));
            v.extend(self.packages.iter().cloned());
            v
        })
    }

    /// `--unmerge` of the `unmerge` packages; `None` without any.
    pub fn unmerge(&self) -> Option<Vec<String>> {
        (!self.unmerge.is_empty()).then(|| {
            let mut v = self.base();
            v.push("--unmerge".into());
            v.extend(self.unmerge.iter().cloned());
            v
        })
    }

    /// `--depclean --with-bdeps=n`, only with `depclean` and packages.
    pub fn depclean(&self) -> Option<Vec<String>> {
        (self.depclean && !self.packages.is_empty()).then(|| {
            let mut v = self.base();
            v.extend(["--depclean".to_string(), "--with-bdeps=n".to_string()]);
            v
        })
    }
}

/// Splits a string shell-style (quotes and backslashes honoured, no expansion), as
/// genTree does for `seed_update_args`.
pub fn shell_split(s: &str) -> Result<Vec<String>, &'static str> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err("unterminated single quote"),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err("unterminated double quote"),
                        },
                        Some(c) => cur.push(c),
                        None => return Err("unterminated double quote"),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') => {}
                    Some(c) => cur.push(c),
                    None => return Err("trailing backslash"),
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn option_args_table() {
        let plain = s(&["nodeps", "oneshot", "update", "changed-use"]);
        type Case<'a> = (
            &'a [(&'a str, &'a str)],
            &'a [(&'a str, bool)],
            &'a [&'a str],
        );
        let cases: &[Case<'_>] = &[
            // genTree's glibc example order: defaults then the base's bools.
            (
                &[("jobs", "8")],
                &[
                    ("verbose", true),
                    ("nodeps", true),
                    ("usepkg", true),
                    ("with_bdeps", false),
                    ("oneshot", true),
                ],
                &[
                    "--jobs=8",
                    "--verbose=y",
                    "--nodeps",
                    "--usepkg=y",
                    "--with-bdeps=n",
                    "--oneshot",
                ],
            ),
            // plain bools false are omitted; B58: args keys dash-converted, update/changed_use plain.
            (
                &[("load_average", "3.5"), ("keep-going", "y")],
                &[
                    ("nodeps", false),
                    ("update", true),
                    ("changed_use", true),
                    ("quiet_build", false),
                ],
                &[
                    "--load-average=3.5",
                    "--keep-going=y",
                    "--update",
                    "--changed-use",
                    "--quiet-build=n",
                ],
            ),
        ];
        for (args, bools, want) in cases {
            let args: Vec<_> = args
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let bools: Vec<_> = bools.iter().map(|(k, v)| (k.to_string(), *v)).collect();
            assert_eq!(option_args(&args, &bools, &plain), s(want));
        }
    }

    #[test]
    fn root_and_program() {
        assert_eq!(program(None), "emerge");
        assert_eq!(
            program(Some("aarch64-unknown-linux-gnu")),
            "emerge-aarch64-unknown-linux-gnu"
        );
        assert_eq!(root_args("/builds/x", false), s(&["--root", "/builds/x"]));
        assert_eq!(
            root_args("/builds/x", true),
            s(&["--root", "/builds/x", "--config-root", "/builds/x"])
        );
    }

    #[test]
    fn shell_split_table() {
        let cases: &[(&str, &[&str])] = &[
            (
                "--jobs 4 --update --deep --newuse --changed-use --with-bdeps=y --usepkg=y @world",
                &[
                    "--jobs",
                    "4",
                    "--update",
                    "--deep",
                    "--newuse",
                    "--changed-use",
                    "--with-bdeps=y",
                    "--usepkg=y",
                    "@world",
                ],
            ),
            (
                "  a  'b c' \"d \\\"e\\\"\" f\\ g ''",
                &["a", "b c", "d \"e\"", "f g", ""],
            ),
            ("$HOME *", &["$HOME", "*"]),
            ("", &[]),
        ];
        for (input, want) in cases {
            assert_eq!(shell_split(input).unwrap(), s(want), "{input:?}");
        }
        for bad in ["'x", "\"x", "x\\"] {
            assert!(shell_split(bad).is_err(), "{bad:?}");
        }
    }
}
