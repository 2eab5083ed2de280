//! `edge-agent user add|passwd|remove|token|list --file FILE …`: the status page's users file
//! (see `web::users` for its format and `docs/access.md` for its use).
//!
//! Passwords are never taken from the command line: they are prompted for with the echo off
//! on a terminal (twice), or read as one line from standard input otherwise (scripts, tests).
//! The file is created with mode 0600 and rewritten atomically. A running agent notices the
//! change within seconds; nothing needs a restart.

use std::io::{BufRead as _, IsTerminal as _};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand, ValueEnum};

use crate::web::users::{self, Entry, Role, Users, MAX_PASSWORD_BYTES, MIN_PASSWORD_CHARS};

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user (prompts for the password).
    Add {
        #[command(flatten)]
        target: Target,
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    /// Set a new password for a user (prompts for it); their sessions end.
    Passwd {
        #[command(flatten)]
        target: Target,
    },
    /// Remove a user or an API token; their sessions end.
    Remove {
        #[command(flatten)]
        target: Target,
    },
    /// Make a new API token for a machine (a Prometheus scraper) and print it, once; an
    /// existing token of that name is replaced.
    Token {
        #[command(flatten)]
        target: Target,
    },
    /// List the users with their roles, and the tokens (names only).
    List {
        /// The users file (`web.users_file`).
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct Target {
    /// The users file (`web.users_file`); created by `add` and `token` if missing.
    #[arg(long, value_name = "FILE")]
    pub file: PathBuf,
    /// The user's (or token's) name: 1–64 letters, digits, '.', '_', '-' or '@'.
    pub name: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    /// Reads the page; changes nothing.
    Viewer,
    /// Also acknowledges events and trusts certificates from the page.
    Operator,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Viewer => Role::Viewer,
            RoleArg::Operator => Role::Operator,
        }
    }
}

/// Runs one subcommand (blocking: file I/O, the terminal, argon2).
pub fn run(cmd: UserCommand) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Add { target, role } => {
            let mut list = load_or_empty(&target.file)?;
            check_name(&target.name)?;
            if list.get(&target.name).is_some() {
                bail!(
                    "{:?} is already in {}: use `user passwd` to change the password, or `user remove` first",
                    target.name,
                    target.file.display()
                );
            }
            let hash = users::hash_password(&read_new_password(&target.name)?)?;
            list.upsert(Entry::User { name: target.name.clone(), role: role.into(), hash });
            list.save(&target.file)?;
            eprintln!("added {} ({}) to {}", target.name, Role::from(role), target.file.display());
        }
        UserCommand::Passwd { target } => {
            let mut list = Users::load(&target.file)?;
            let Some((role, _)) = list.user(&target.name) else {
                bail!("no user {:?} in {}", target.name, target.file.display());
            };
            let hash = users::hash_password(&read_new_password(&target.name)?)?;
            list.upsert(Entry::User { name: target.name.clone(), role, hash });
            list.save(&target.file)?;
            eprintln!("changed the password of {}; their sessions have ended", target.name);
        }
        UserCommand::Remove { target } => {
            let mut list = Users::load(&target.file)?;
            if !list.remove(&target.name) {
                bail!("no user or token {:?} in {}", target.name, target.file.display());
            }
            list.save(&target.file)?;
            eprintln!("removed {} from {}", target.name, target.file.display());
        }
        UserCommand::Token { target } => {
            let mut list = load_or_empty(&target.file)?;
            check_name(&target.name)?;
            if list.user(&target.name).is_some() {
                bail!("{:?} is a user in {}: a token needs a name of its own", target.name, target.file.display());
            }
            let (token, entry) = users::new_token(&target.name);
            list.upsert(entry);
            list.save(&target.file)?;
            println!("{token}");
            eprintln!(
                "token {} saved (hashed) in {}. It is shown this once: give it to the scraper as `Authorization: Bearer <token>`.",
                target.name,
                target.file.display()
            );
        }
        UserCommand::List { file } => {
            for e in Users::load(&file)?.entries {
                match e {
                    Entry::User { name, role, .. } => println!("{name} {role}"),
                    Entry::Token { name, .. } => println!("{name} token"),
                }
            }
        }
    }
    Ok(())
}

fn check_name(name: &str) -> anyhow::Result<()> {
    if !users::is_valid_name(name) {
        bail!("{name:?} is not a valid name: use 1–64 letters, digits, '.', '_', '-' or '@'");
    }
    Ok(())
}

fn load_or_empty(file: &Path) -> anyhow::Result<Users> {
    if file.exists() {
        Ok(Users::load(file)?)
    } else {
        Ok(Users::default())
    }
}

/// The new password: prompted twice with the echo off on a terminal, else one line of stdin.
fn read_new_password(name: &str) -> anyhow::Result<String> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("New password for {name}: ")).context("cannot read the password")?;
        let again = rpassword::prompt_password("Again: ").context("cannot read the password")?;
        if first != again {
            bail!("the two passwords differ; nothing was changed");
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).context("cannot read the password from standard input")?;
        line.trim_end_matches(['\n', '\r']).to_string()
    };
    if password.chars().count() < MIN_PASSWORD_CHARS {
        bail!("the password must have at least {MIN_PASSWORD_CHARS} characters; nothing was changed");
    }
    if password.len() > MAX_PASSWORD_BYTES {
        bail!("the password must have at most {MAX_PASSWORD_BYTES} bytes; nothing was changed");
    }
    Ok(password)
}
