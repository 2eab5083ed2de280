//! The Modbus config example of the manual (docs/modbus.md, moved there from the README) is
//! a config the agent accepts: the "Modbus support" page stays true to the code.

use edge_agent::config::load_str;
use edge_drivers::Protocol;

/// The first ```toml block after `heading` in docs/modbus.md.
fn toml_block_after(heading: &str) -> String {
    let page = include_str!("../docs/modbus.md");
    let section = &page[page.find(heading).unwrap_or_else(|| panic!("docs/modbus.md has no {heading:?}"))..];
    let start = section.find("```toml\n").expect("a toml block in the section") + "```toml\n".len();
    let end = start + section[start..].find("```").expect("the block ends");
    section[start..end].to_string()
}

#[test]
fn the_manuals_modbus_example_is_a_valid_config() {
    // Given the manual's example of the three Modbus transports, in a minimal config
    let devices = toml_block_after("# Modbus support");
    let text = format!("[gateway]\nid = \"gw-01\"\nsite = \"s\"\ndata_dir = \"/tmp/x\"\n\n[mqtt]\nhost = \"127.0.0.1\"\n\n{devices}");

    // When it is loaded and checked
    let config = load_str(&text, "docs/modbus.md").unwrap_or_else(|e| panic!("the manual's Modbus example is refused:\n{e}"));

    // Then every device of it is there, one per transport (two meters sharing one line)
    let protocols: Vec<Protocol> = config.devices.iter().map(|d| d.protocol).collect();
    assert_eq!(protocols, [Protocol::ModbusTcp, Protocol::ModbusRtu, Protocol::ModbusRtu, Protocol::ModbusRtuOverTcp]);
    assert_eq!(edge_drivers::modbus::group_by_bus(&config.devices).len(), 3, "the two meters share one bus");
}
