//! `completions SHELL` and `manpages DIR`: what a package installs beside the binary, generated
//! from the clap definition the binary parses, so neither can drift from the options it accepts.
//! Both need no settings: a packager runs them on a build machine without a configuration.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;

use super::failure::{io_failure, Failure};
use super::Cli;

const BIN: &str = "nprov-sync";

#[derive(Debug, clap::Args)]
pub struct Completions {
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

impl Completions {
    pub(super) fn run(&self, out: &mut dyn Write) -> Result<(), Failure> {
        completions(self.shell, out)
    }
}

#[derive(Debug, clap::Args)]
pub struct Manpages {
    #[arg(value_name = "DIR")]
    dir: std::path::PathBuf,
}

impl Manpages {
    pub(super) fn run(&self, out: &mut dyn Write) -> Result<(), Failure> {
        manpages(&self.dir, out)
    }
}

fn completions(shell: clap_complete::Shell, out: &mut dyn Write) -> Result<(), Failure> {
    let mut command = Cli::command();
    // Into memory first: clap_complete panics on a failed write (a closed pipe), we report it.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, BIN, &mut script);
    out.write_all(&script).map_err(io_failure)?;
    out.flush().map_err(io_failure)
}

/// Writes `nprov-sync.1` and one page per subcommand (`nprov-sync-run.1`,
/// `nprov-sync-config-check.1`, …) into `dir`, creating it; prints the files written.
fn manpages(dir: &Path, out: &mut dyn Write) -> Result<(), Failure> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("cannot create {}: {e}", dir.display())))?;
    let mut command = Cli::command();
    // Subcommands' pages are named after their path ("nprov-sync config check"); building the
    // command fills in what derive leaves lazy (bin names, propagated global options).
    command.build();
    let mut written = Vec::new();
    page(&command, BIN, dir, true, &mut written)?;
    for name in &written {
        writeln!(out, "{}", dir.join(name).display()).map_err(io_failure)?;
    }
    Ok(())
}

fn page(
    command: &clap::Command,
    name: &str,
    dir: &Path,
    top: bool,
    written: &mut Vec<String>,
) -> Result<(), Failure> {
    let file = format!("{name}.1");
    let mut roff = Vec::new();
    let man = clap_mangen::Man::new(command.clone().name(name.to_owned()))
        .manual("nprov-sync manual")
        .source(concat!("nprov-sync ", env!("CARGO_PKG_VERSION")));
    man.render(&mut roff).map_err(io_failure)?;
    if top {
        roff.extend_from_slice(MAIN_PAGE_SECTIONS.as_bytes());
    } else {
        roff.extend_from_slice(b".SH \"SEE ALSO\"\n\\fBnprov-sync\\fR(1)\n");
    }
    std::fs::write(dir.join(&file), roff).map_err(|e| {
        Failure::Runtime(anyhow::anyhow!(
            "cannot write {}: {e}",
            dir.join(&file).display()
        ))
    })?;
    written.push(file);
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        page(
            sub,
            &format!("{name}-{}", sub.get_name()),
            dir,
            false,
            written,
        )?;
    }
    Ok(())
}

/// What clap cannot know: exit codes, files, environment. Kept in step with `Failure::exit_code`
/// (a test reads the codes back) and the units.
const MAIN_PAGE_SECTIONS: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
Success.
.TP
\fB1\fR
Bad input data: a document or record that does not parse or breaks the schema's rules; or a
provisioning pass whose removals were refused (more than \fBmax_removed_share\fR of a kind).
.TP
\fB2\fR
Bad configuration or usage: restarting cannot help (the unit does not restart on it).
.TP
\fB3\fR
Database, network or system failure: the window in flight was not committed and the watermark
stayed where it was; a later run resumes from there.
.TP
\fB4\fR
\fBstatus\fR only: a source is not ready, by the same rule as the daemon's /readyz.
.SH ENVIRONMENT
.TP
\fBNPROV_CONFIG\fR
The configuration file, as \fB\-\-config\fR.
.TP
\fBNPROV_\fISECTION\fB_\fIKEY\fR
Any setting of the file, e.g. \fBNPROV_DATABASE_URL\fR; \fBnprov-sync config example\fR lists
them. An unknown \fBNPROV_\fR variable is an error, not ignored.
.TP
\fBRUST_LOG\fR
Log filter, as \fB[log] level\fR.
.TP
\fBSSL_CERT_FILE\fR, \fBSSL_CERT_DIR\fR
Replace the operating system's trust store, as for OpenSSL; a source's \fBca_file\fR and the
database's \fBsslrootcert\fR add to it.
.TP
\fBNO_COLOR\fR
No colours in logs on a terminal.
.TP
\fBCREDENTIALS_DIRECTORY\fR
Set by systemd: relative credential file names are looked up there.
.SH FILES
.TP
\fI/etc/nprov-sync/nprov.toml\fR
The configuration the units use (no secrets in it).
.TP
\fI/etc/nprov-sync/credentials/\fR
Client certificate and key, password or token, read by systemd and handed to the service.
.TP
\fI/var/lib/nprov-sync/\fR
The state directory: the SQLite mirror by default.
.TP
\fI/usr/share/doc/nprov-sync/\fR
README, example configuration, alert rules and dashboard.
.SH PROVISIONING
Beside the results, \fB[[provisioning]]\fR sources mirror what the huvudman registered at
Skolverket's provtjänst (persons, duties, groups, activities) into the \fBprov_*\fR tables, read
back through the provisioning API in full passes: every kind to its last page at
\fBrate_limit_per_second\fR (at most 10), persons whose list entry changed looked up whole, a
record a complete pass no longer sees marked removed. A GNAP token is asked of \fBauth_url\fR over
mutual TLS (the client certificate; \fBentity_id\fR or the certificate's SHA-256 names the
organisation) and refreshed before it expires.
.TP
\fBPersonal data\fR
The personnummer is stored only as an HMAC-SHA-256 under \fBcivic_no_key_file\fR
(\fBnprov-sync provisioning hash-civic-no\fR prints one number's); a person with a security
marking keeps only ids and enrolments. No request or response body is logged.
.TP
\fBRemovals\fR
A complete pass that would remove more than \fBmax_removed_share\fR (0.2) of a kind removes none
of it until \fBnprov-sync provisioning accept-removals\fR \fINAME\fR or the next pass agrees.
.TP
\fBJoins\fR
\fBv_prov_registered_result\fR, \fBv_prov_registered_without_result\fR and
\fBv_prov_result_without_registration\fR join the two mirrors by the pupil's id (braces and case
ignored). Skolverket forwards registrations up to 30 minutes late, or later under load.
.SH "SEE ALSO"
\fBsystemctl\fR(1), \fBsystemd.exec\fR(5), \fBpsql\fR(1), \fBsqlite3\fR(1)
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_main_page_lists_every_exit_code_the_binary_uses() {
        let failures = [
            Failure::Data(anyhow::anyhow!("x")),
            Failure::Config(anyhow::anyhow!("x")),
            Failure::Runtime(anyhow::anyhow!("x")),
            Failure::NotReady(anyhow::anyhow!("x")),
        ];
        let listed: Vec<i32> = MAIN_PAGE_SECTIONS
            .split(".TP\n\\fB")
            .skip(1)
            .filter_map(|item| item.split("\\fR").next()?.parse().ok())
            .collect();
        let mut used: Vec<i32> = failures.iter().map(Failure::exit_code).collect();
        used.insert(0, 0);
        assert_eq!(listed, used);
    }
}
