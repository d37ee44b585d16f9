use super::*;

#[test]
fn the_command_line_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn bash_completion_offers_every_subcommand_and_option() {
    let mut out = Vec::new();
    clap_complete::generate(clap_complete::Shell::Bash, &mut Cli::command(), "observer", &mut out);
    let script = String::from_utf8(out).unwrap();
    assert!(script.contains("complete -F _observer"), "{script}");
    for word in ["run", "connections", "top", "trace", "status", "detach", "completions", "man", "--server", "--min-requests", "--status", "--log-format"] {
        assert!(script.contains(word), "the bash completion lacks {word:?}");
    }
}

#[test]
fn the_man_page_renders_with_its_sections() {
    let mut out = Vec::new();
    man::page(Cli::command(), None).unwrap().render(&mut out).unwrap();
    let page = String::from_utf8(out).unwrap();
    for section in [".TH observer 1", ".SH NAME", ".SH SYNOPSIS", ".SH SUBCOMMANDS", "observer\\-trace"] {
        assert!(page.contains(section), "the man page lacks {section:?}:\n{page}");
    }
}

#[test]
fn man_takes_a_subcommand_or_a_directory() {
    let man = |args: &[&str]| match Cli::try_parse_from([&["observer", "man"], args].concat()).map(|c| c.command) {
        Ok(Command::Man { subcommand, dir }) => Ok((subcommand, dir)),
        Ok(_) => unreachable!(),
        Err(e) => Err(e.to_string()),
    };
    assert_eq!(man(&[]), Ok((None, None)));
    assert_eq!(man(&["trace"]), Ok((Some("trace".to_owned()), None)));
    assert_eq!(man(&["--dir", "/tmp/m"]), Ok((None, Some(PathBuf::from("/tmp/m")))));
    assert!(man(&["help"]).unwrap_err().contains("the pages are of run, connections, top"));
    assert!(man(&["trace", "--dir", "/tmp/m"]).is_err(), "one or the other");
}

#[test]
fn the_server_comes_from_the_flag_then_the_environment_then_the_default() {
    let server = |args: &[&str]| match Cli::try_parse_from(args).map(|c| c.command) {
        Ok(Command::Status { server, .. }) => Ok(server.server.to_string()),
        Ok(_) => unreachable!(),
        Err(e) => Err(e.to_string()),
    };
    // One test touches the variable, so that no other test sees it change.
    std::env::remove_var("OBSERVER_SERVER");
    assert_eq!(server(&["observer", "status"]), Ok(DEFAULT_LISTEN.to_owned()));
    std::env::set_var("OBSERVER_SERVER", "http://[::1]:9471/");
    assert_eq!(server(&["observer", "status"]), Ok("[::1]:9471".to_owned()));
    assert_eq!(server(&["observer", "status", "--server", "unix:/run/o.sock"]), Ok("unix:/run/o.sock".to_owned()));
    std::env::set_var("OBSERVER_SERVER", "https://gw:9470");
    assert!(server(&["observer", "status"]).unwrap_err().contains("TLS is not served"));
    std::env::remove_var("OBSERVER_SERVER");
    assert!(server(&["observer", "status", "--server", "gw"]).unwrap_err().contains("no port"));
}

#[test]
fn every_connections_filter_reaches_the_api_under_its_name() {
    let Command::Connections { list, .. } = Cli::try_parse_from([
        "observer",
        "connections",
        "--state",
        "closed",
        "--role",
        "inbound",
        "--port",
        "80",
        "--local-port",
        "8080",
        "--remote-port",
        "51234",
        "--address",
        "198.18.1.2",
        "--min-requests",
        "3",
        "--order",
        "asc",
        "--server",
        "127.0.0.1:9470",
    ])
    .unwrap()
    .command
    else {
        unreachable!()
    };
    let a = list.into_args();
    let names: Vec<(&str, &str)> = a.filters.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        names,
        [
            ("state", "closed"),
            ("role", "inbound"),
            ("port", "80"),
            ("local_port", "8080"),
            ("remote_port", "51234"),
            ("address", "198.18.1.2"),
            ("min_requests", "3"),
            ("order", "asc")
        ]
    );
    assert!(Cli::try_parse_from(["observer", "connections", "--order", "up"]).is_err());
}
