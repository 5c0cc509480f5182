//! Command-line syntax (clap). Raw flags only: resolving them into settings is the
//! job of each command in [`crate::commands`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Build minimal Gentoo-style root filesystem images with Portage.
///
/// A build config is a genTree-compatible TOML file naming a seed (an imported
/// stage3-like root), packages to emerge and base configs to stack under it.
/// Start with `gentree-fs config FILE` to see how a config resolves.
///
/// Without a subcommand, `gentree-fs [OPTIONS] MOUNTPOINT` mounts the gentree
/// filesystem: seeds/<seed>/ (read-only), configs/ (the build configs),
/// builds/<config>.tar (built when first read, then reused while its inputs are
/// unchanged), builds/<config>.log (the build log, `tail -f` follows it),
/// layers/<buildname>.tar (each published layer as an OCI layer tar) and
/// packages/<dir>/ (the binary package dirs, read-only). Unmount with
/// `fusermount3 -u MOUNTPOINT`, `umount`, or SIGINT/SIGTERM to the daemon.
///
/// A new mount needs a seed and a config: `gentree-fs import-seed STAGE3.tar.xz
/// NAME` imports one into CONF_ROOT/seeds, and `cp app.toml MOUNTPOINT/configs/`
/// adds builds/app.tar. Every build runs sandboxed (README, "Security model").
#[derive(Debug, Parser)]
#[command(
    name = "gentree-fs",
    version,
    propagate_version = true,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    /// More logging: -d for debug, -dd for trace (RUST_LOG overrides).
    #[arg(short = 'd', long = "debug", action = clap::ArgAction::Count, global = true)]
    pub debug: u8,

    #[command(flatten)]
    pub mount: MountArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The top-level mount: `gentree-fs [OPTIONS] MOUNTPOINT`.
#[derive(Debug, Clone, Default, Args)]
pub struct MountArgs {
    /// Stay in the foreground (the default is to return once the mount is ready).
    #[arg(short = 'f', long = "foreground")]
    pub foreground: bool,
    /// Mount options, comma-separated, repeatable: allow_other, allow_root, ro, nodev,
    /// nosuid, noexec, noatime, auto_unmount, default_permissions, fsname=, subtype=, ...
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// Data directory (default: $XDG_DATA_HOME/gentree, else /var/lib/gentree for root,
    /// ~/.local/share/gentree for a user).
    #[arg(long, value_name = "DIR", env = "GENTREE_CONF_ROOT")]
    pub conf_root: Option<PathBuf>,
    /// The build configs shown as configs/ (default: CONF_ROOT/configs).
    #[arg(long, value_name = "DIR")]
    pub configs: Option<PathBuf>,
    /// Do not read the default config files (/etc and ~/.config).
    #[arg(long)]
    pub no_config: bool,
    /// Worker threads (default: the number of CPUs).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Do not keep finished images as files (CONF_ROOT/images/<key>-<digest>.tar, one per
    /// image, as large as the image). A privileged daemon (root) keeps them to serve
    /// builds/<config>.tar by FUSE passthrough, at the speed of an ordinary file;
    /// without them, or rootless, images are assembled from the layers on each read.
    #[arg(long)]
    pub no_image_files: bool,
    /// The layer cache, an OCI registry repository `[http://|https://]HOST[:PORT]/REPO`
    /// (https unless http:// is given): a missing layer is pulled from it when another
    /// machine built it, a layer built here is pushed. Default: `cache = "REF"` in the
    /// default config. Credentials as podman's (REGISTRY_AUTH_FILE,
    /// $XDG_RUNTIME_DIR/containers/auth.json, ~/.docker/config.json).
    #[arg(long, value_name = "REF", value_parser = crate::cache::CacheRef::parse)]
    pub cache: Option<crate::cache::CacheRef>,
    /// Where to mount.
    #[arg(required = true)]
    pub mountpoint: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Resolve a build config and print the result (bases in build order).
    ///
    /// Shows what a build would do: the buildname, the emerge command line,
    /// the exported environment and the filters, for the config and each base.
    /// Defaults come from the embedded defaults, /etc/gentree/config.toml and
    /// $XDG_CONFIG_HOME/gentree/config.toml (genTree's paths are read where
    /// gentree's are absent).
    Config(ConfigArgs),

    /// Mount a userspace union (overlay) filesystem, fuse-overlayfs style.
    ///
    ///   gentree-fs union -o lowerdir=/l1:/l2,upperdir=/u,workdir=/w /mnt
    ///
    /// L1 is the topmost lower layer. Without upperdir the mount is read-only.
    /// Unmount with `fusermount3 -u MOUNTPOINT`, `umount`, or SIGINT/SIGTERM.
    ///
    /// Run as root, the union hands open files to the kernel (FUSE passthrough), so
    /// reads and writes cost no round trip. The kernel ties one disk file to an open
    /// inode, so opening a lower file for writing (or truncating it) while another
    /// process still has it open waits up to 2 s for that reader, then fails with
    /// ETXTBSY, where kernel overlayfs would succeed. `-o nopassthrough` serves every
    /// file through the daemon instead. Rootless mounts never use passthrough.
    ///
    /// Directories of lower layers can be renamed (as kernel overlayfs with
    /// redirect_dir=on): the upper gets an opaque copy of the merged tree under the
    /// new name, files hard-linked where the layers share a filesystem, and a
    /// whiteout of the old name. Keep WORKDIR with UPPERDIR: its gentree-shared file
    /// lists the linked files, which get a copy of their own before any change.
    ///
    /// The mount's type is fuse.gentree-fs. A line of /etc/fstab (through mount.fuse3):
    ///
    ///   union /mnt fuse.gentree-fs lowerdir=/l,upperdir=/u,workdir=/w,nodev,nosuid 0 0
    Union(UnionArgs),

    /// Write a tar of layer directories: the flattened image or one OCI layer.
    ///
    /// Layers are given lowest first. Whiteouts and opaque directories in upper
    /// layers delete entries of lower ones; filters drop documentation, headers and
    /// so on as a build would.
    Pack(PackArgs),

    /// Import a seed root (a stage3 tarball or a directory) for builds to run in.
    ///
    /// Tarballs may be uncompressed or gzip, xz, bzip2 or zstd compressed
    /// (detected by content). The import is atomic and refuses hostile archives.
    #[command(name = "import-seed")]
    ImportSeed(ImportSeedArgs),

    /// Build a config's layers with Portage and write the flattened image tar.
    ///
    /// Each layer (bases first) is reused when its inputs are unchanged and built
    /// otherwise, by emerge in a user+mount namespace chrooted into the seed, on
    /// userspace unions (no kernel overlayfs, no root needed). Output streams to
    /// the terminal and to CONF_ROOT/builds/<buildname>.log.
    Build(BuildArgs),

    /// Run a command in a seed, in the same namespaces builds use.
    ///
    /// By default changes go to a throwaway upper layer and vanish afterwards;
    /// with --persistent the command writes into the seed itself (which changes the
    /// seed's identity, so layers built on it rebuild). Typical first use:
    /// `gentree-fs exec SEED emerge --sync` to fill CONF_ROOT/repos.
    /// The command's exit status is passed through.
    Exec(ExecArgs),

    /// Update a seed in place: emerge with the update arguments, then --depclean.
    ///
    /// Runs directly on the imported seed (no union), holding the seed's lock.
    /// UPDATE_ARGS default to the config key seed_update_args ("--jobs 4 --update
    /// --deep --newuse --changed-use --with-bdeps=y --usepkg=y @world"). Afterwards
    /// the seed's persistent upper (build-time packages installed against the old
    /// seed) is removed and the seed gets a new identity, so every layer built on
    /// it is rebuilt. With -c, the crossdev sysroot is updated (emerge-TUPLE).
    /// Output goes to the terminal and CONF_ROOT/builds/update-seed-<SEED>.log.
    #[command(name = "update-seed")]
    UpdateSeed(UpdateSeedArgs),

    /// Remove finished images and the layers no given config uses; print what was freed.
    ///
    /// Removes every *.tar file directly in the build dir (the images; logs stay),
    /// and every published layer that is not a layer of one of the CONFIGS as they
    /// resolve now: with no CONFIGS, every layer. Layers of a build that is running
    /// (its key lock is held) are kept; temp dirs of crashed builds are removed.
    /// A build that only reuses a layer does not lock it: do not clean while
    /// builds run.
    #[command(name = "clean-builds")]
    CleanBuilds(CleanBuildsArgs),

    /// Install a crossdev toolchain for TUPLE in a seed, and its base layers' packages.
    ///
    /// Works on the seed itself. Phase 1: emerge crossdev and eselect-repository
    /// (FEATURES=-usersandbox), `eselect repository enable crossdev`,
    /// `crossdev --target TUPLE`. Phase 2: each layer of the --base tree (bases
    /// first) is emerged with emerge-TUPLE into /usr/TUPLE, oneshot. The seed needs
    /// crossdev installed or a repository (CONF_ROOT/repos) providing
    /// sys-devel/crossdev. Afterwards, as with update-seed, the seed's upper is
    /// removed and its identity changes.
    #[command(name = "init-crossdev")]
    InitCrossdev(InitCrossdevArgs),

    /// Serve a seed's binary packages over HTTP (a Portage binhost) and build on request.
    ///
    /// Serves the seed's package dir (CONF_ROOT/pkgdir, with the -t/-c suffixes; created
    /// if missing) read-only: the Packages index and the gpkg/xpak files, with ranges,
    /// never a directory listing or anything outside it. Requests:
    ///
    ///   GET /pkg?pkg=ATOM   queue a build of ATOM (a package atom such as
    ///                       app-misc/foo or >=app-misc/foo-1.2:0; never an option)
    ///   GET /queue          JSON: pending atoms and recent builds (state: queued,
    ///                       waiting for the seed, building, done, failed; times,
    ///                       exit status, log path)
    ///   GET /Packages, /CATEGORY/NAME/FILE   the binhost
    ///
    /// Builds run one at a time in the seed's namespace, like a layer build's seed:
    /// `emerge --oneshot --autounmask=y --autounmask-continue=y --usepkg=y --buildpkg
    /// --jobs=N --noreplace ATOM` into the seed (its persistent upper, or a tmpfs with
    /// --ephemeral-seed), logged to CONF_ROOT/logs/serve/<id>-<atom>.log. SIGINT or
    /// SIGTERM stops accepting, kills a running build and exits.
    ///
    /// There is no authentication: keep the default address (127.0.0.1) unless the
    /// network is trusted. A client uses it through /etc/portage/binrepos.conf/gentree.conf:
    ///
    ///   [gentree]
    ///   sync-uri = http://127.0.0.1:8689
    ///   verify-signature = false
    ///
    /// and `emerge --getbinpkg ...` (or FEATURES=getbinpkg). The packages are not
    /// signed unless the seed's Portage signs them (FEATURES=binpkg-signing): without
    /// that, verify-signature must be false (Portage's own binrepos.conf defaults it to
    /// true). A client without wget needs FETCHCOMMAND set to a tool it has.
    #[command(verbatim_doc_comment)]
    Serve(ServeArgs),

    /// Print a shell completion script for gentree-fs to standard output.
    ///
    /// Install it for bash with
    /// `gentree-fs completions bash > ~/.local/share/bash-completion/completions/gentree-fs`
    /// (zsh: a file `_gentree-fs` in a directory of $fpath; fish:
    /// ~/.config/fish/completions/gentree-fs.fish).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },

    /// Write man pages (gentree-fs.1 and one per subcommand) into a directory.
    ///
    /// Install them with `gentree-fs man --dir ~/.local/share/man/man1` (or, as root,
    /// `--dir /usr/local/share/man/man1`), then `man gentree-fs`.
    Man {
        /// Where to write the pages (created if missing).
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
    },

    /// Internal: the namespace helper (re-executed by gentree-fs itself).
    #[command(name = "__ns-exec", hide = true)]
    NsExec,

    /// Internal, for tests and debugging: run a namespace plan (JSON file) as the caller.
    #[command(name = "__ns-run", hide = true)]
    NsRun {
        /// The plan (see builder::namespace::Plan). `mapping: "auto"` is not accepted:
        /// pass `--auto-map` to replace the plan's mapping with the caller's.
        plan: PathBuf,
        /// Use the mapping the caller would get (root, subordinate ids, or single).
        #[arg(long)]
        auto_map: bool,
    },
}

/// Options shared by every command that resolves a build config.
#[derive(Debug, Clone, Default, Args)]
pub struct BuildSelect {
    /// Build for a crossdev target tuple (uses emerge-TUPLE).
    #[arg(short = 'c', long = "crossdev-target", value_name = "TUPLE")]
    pub crossdev_target: Option<String>,
    /// Portage profile (path below profiles/), e.g. default/linux/amd64/23.0.
    #[arg(short = 'p', long = "profile", value_name = "PROFILE")]
    pub profile: Option<String>,
    /// Build tag: selects [default.<seed>.<TAG>] overrides and is part of names.
    #[arg(short = 't', long = "build-tag", value_name = "TAG")]
    pub build_tag: Option<String>,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(flatten)]
    pub select: BuildSelect,
    /// Print JSON (one object per config, bases nested) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Do not read the default config files (/etc and ~/.config); embedded defaults only.
    #[arg(long)]
    pub no_config: bool,
    /// Data directory whose seed, repositories and layers determine the layer keys
    /// shown by `--json` (default: $XDG_DATA_HOME/gentree).
    #[arg(long, value_name = "DIR", env = "GENTREE_CONF_ROOT")]
    pub conf_root: Option<PathBuf>,
    /// The build config (TOML). Defaults to config.toml in the current directory.
    #[arg(default_value = "config.toml")]
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct UnionArgs {
    /// Mount options, comma-separated, repeatable: lowerdir=L1:L2,upperdir=U,workdir=W,
    /// plus allow_other, allow_root, ro, dev, suid, timeout=SECS (kernel cache time:
    /// 1 s for a writable union, unlimited for a read-only one), nopassthrough, and
    /// fuse-overlayfs and fstab options that are accepted and ignored. Run as root,
    /// the union is open to every user (allow_other, with the kernel checking modes)
    /// unless noallow_other keeps it to root.
    #[arg(short = 'o', value_name = "OPTIONS", required = true)]
    pub options: Vec<String>,
    /// Stay in the foreground (the default is to return once the mount is ready).
    #[arg(short = 'f', long = "foreground")]
    pub foreground: bool,
    /// Worker threads (default: the number of CPUs).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// [SOURCE] MOUNTPOINT: where to mount the union. A SOURCE before it only names
    /// the mount in the mount table (default: union). Through
    /// mount(8) and /etc/fstab the type is fuse.gentree-fs and the source field is
    /// the word `union` (mount.fuse3 runs `gentree-fs SOURCE MOUNTPOINT -o OPTIONS`):
    /// `union /mnt/merged fuse.gentree-fs lowerdir=/l,upperdir=/u,workdir=/w 0 0`.
    #[arg(value_name = "MOUNTPOINT", num_args = 1..=2, required = true)]
    pub places: Vec<PathBuf>,
}

impl UnionArgs {
    /// Where to mount: the last positional.
    pub fn mountpoint(&self) -> &std::path::Path {
        self.places.last().map_or(std::path::Path::new(""), |p| p)
    }

    /// The SOURCE positional, when two were given.
    pub fn source(&self) -> Option<&str> {
        match self.places.as_slice() {
            [s, _] => s.to_str(),
            _ => None,
        }
    }
}

#[derive(Debug, Args)]
pub struct PackArgs {
    /// A layer directory, lowest first; repeat for each layer.
    #[arg(long = "layer", value_name = "DIR", required = true)]
    pub layers: Vec<PathBuf>,
    /// Write the top layer's changes as an OCI layer tar (whiteouts kept) instead
    /// of the flattened image.
    #[arg(long)]
    pub oci_layer: bool,
    /// Turn a filter on or off: man, docs, include, locales, charmaps, completions,
    /// vardbpkg, gconv, locale_archive, dev (NAME alone means NAME=true). Defaults
    /// are genTree's tar filters: man, docs, include, charmaps, completions, dev.
    #[arg(long = "filter", value_name = "NAME[=BOOL]")]
    pub filters: Vec<String>,
    /// Clamp mtimes to this Unix time (default: $SOURCE_DATE_EPOCH if set).
    #[arg(long, value_name = "EPOCH")]
    pub source_date_epoch: Option<i64>,
    /// Output file, or - for standard output.
    #[arg(
        short = 'o',
        long = "output",
        value_name = "FILE|-",
        default_value = "-"
    )]
    pub output: PathBuf,
}

#[derive(Debug, Args)]
pub struct ImportSeedArgs {
    /// A directory or a stage3-style tarball (uncompressed, gz, xz, bz2 or zst).
    pub source: PathBuf,
    /// Seed name (default: the source's file name up to its first dot).
    pub name: Option<String>,
    /// Data directory holding seeds/ (default: $XDG_DATA_HOME/gentree, else /var/lib/gentree for root,
    /// ~/.local/share/gentree for a user).
    #[arg(long, value_name = "DIR", env = "GENTREE_CONF_ROOT")]
    pub conf_root: Option<PathBuf>,
    /// Replace an existing seed of that name.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub select: BuildSelect,
    /// Rebuild the config's own layer even if one with the same inputs exists.
    #[arg(long)]
    pub rebuild: bool,
    /// Build with no network: each layer's build gets a network namespace of its
    /// own, so emerge uses only what distfiles and the binary package dir hold.
    #[arg(long)]
    pub no_network: bool,
    /// Where to write the image (default: CONF_ROOT/builds/<buildname>-full.tar, or
    /// the config's output_file relative to the build dir); `-` for standard output.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// The layer cache, an OCI registry repository `[http://|https://]HOST[:PORT]/REPO`
    /// (https unless http:// is given): a missing layer is pulled from it when another
    /// machine built it, a layer built here is pushed. Default: `cache = "REF"` in the
    /// default config. Credentials as podman's (REGISTRY_AUTH_FILE,
    /// $XDG_RUNTIME_DIR/containers/auth.json, ~/.docker/config.json).
    #[arg(long, value_name = "REF", value_parser = crate::cache::CacheRef::parse)]
    pub cache: Option<crate::cache::CacheRef>,
    /// Also write the image as an OCI image layout to DIR (tagged `latest`): one
    /// uncompressed layer per layer, the image config from the [oci] tables.
    #[arg(long, value_name = "DIR")]
    pub oci: Option<PathBuf>,
    /// Also write the image's SBOM (SPDX 2.3 JSON, one package per installed Portage
    /// package) to FILE.
    #[arg(long, value_name = "FILE")]
    pub sbom: Option<PathBuf>,
    /// Data directory (default: $XDG_DATA_HOME/gentree, else /var/lib/gentree for root,
    /// ~/.local/share/gentree for a user).
    #[arg(long, value_name = "DIR", env = "GENTREE_CONF_ROOT")]
    pub conf_root: Option<PathBuf>,
    /// Do not read the default config files (/etc and ~/.config).
    #[arg(long)]
    pub no_config: bool,
    /// The build config (TOML).
    #[arg(default_value = "config.toml")]
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Write into the seed itself instead of a throwaway layer.
    #[arg(long)]
    pub persistent: bool,
    /// Mount the repositories (CONF_ROOT/repos) writable, to sync or edit them
    /// (`exec --writable-repos SEED emerge --sync`). Every other run, builds
    /// included, sees them read-only.
    #[arg(long)]
    pub writable_repos: bool,
    /// Run with no network (a network namespace of its own).
    #[arg(long)]
    pub no_network: bool,
    /// Data directory (default: $XDG_DATA_HOME/gentree, else /var/lib/gentree for root,
    /// ~/.local/share/gentree for a user).
    #[arg(long, value_name = "DIR", env = "GENTREE_CONF_ROOT")]
    pub conf_root: Option<PathBuf>,
    /// The seed's name (as given to import-seed).
    pub seed: String,
    /// The command and its arguments (default: /bin/sh).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct UpdateSeedArgs {
    #[command(flatten)]
    pub select: BuildSelect,
    #[command(flatten)]
    pub data: DataArgs,
    /// The seed's name (as given to import-seed).
    pub seed: String,
    /// The emerge arguments, one string split shell-style (quotes honoured).
    #[arg(value_name = "UPDATE_ARGS", allow_hyphen_values = true)]
    pub update_args: Option<String>,
}

#[derive(Debug, Args)]
pub struct CleanBuildsArgs {
    #[command(flatten)]
    pub select: BuildSelect,
    #[command(flatten)]
    pub data: DataArgs,
    /// Print what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Build configs whose layers (and their bases') are kept.
    #[arg(value_name = "CONFIGS")]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct InitCrossdevArgs {
    /// The base config tree installed into the cross root (a builtin name).
    #[arg(long, default_value = "glibc", value_name = "NAME")]
    pub base: String,
    #[command(flatten)]
    pub data: DataArgs,
    /// The seed's name (as given to import-seed).
    pub seed: String,
    /// The target tuple, e.g. aarch64-unknown-linux-gnu.
    pub tuple: String,
}

/// Where the data lives and which defaults apply (update-seed, clean-builds,
/// init-crossdev).
#[derive(Debug, Clone, Default, Args)]
pub struct DataArgs {
    /// Data directory (default: $XDG_DATA_HOME/gentree, else /var/lib/gentree for root,
    /// ~/.local/share/gentree for a user).
    #[arg(long, value_name = "DIR", env = "GENTREE_CONF_ROOT")]
    pub conf_root: Option<PathBuf>,
    /// Do not read the default config files (/etc and ~/.config).
    #[arg(long)]
    pub no_config: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub select: BuildSelect,
    #[command(flatten)]
    pub data: DataArgs,
    /// Address to listen on.
    #[arg(
        short = 'a',
        long = "address",
        value_name = "ADDR",
        default_value = "127.0.0.1"
    )]
    pub address: std::net::IpAddr,
    /// Port to listen on (0: any free port, printed on start-up).
    #[arg(long, value_name = "N", default_value_t = 8689)]
    pub port: u16,
    /// Builds write the seed's upper in a tmpfs that vanishes after each build.
    #[arg(long)]
    pub ephemeral_seed: bool,
    /// How many builds may wait; further requests get 429.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub queue_size: usize,
    /// Most open client connections; when full, the one idle the longest is closed
    /// for a new one.
    #[arg(long, value_name = "N", default_value_t = 512)]
    pub max_connections: usize,
    /// Seconds an idle keep-alive connection stays open, and that a request head may
    /// take to arrive (then 408).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub client_timeout: u64,
    /// The seed's name (as given to import-seed).
    pub seed: String,
}
