// Local JSON-RPC EVM for aimarket tests: `npx hardhat node --hostname 127.0.0.1 --port N`.
// Contracts are Vyper and compiled in Python (ops/adapters/evm/compile.py); hardhat only runs
// the chain. Prague matches Base and vyper 0.4.3's default EVM target. Accounts are
// hardhat's defaults (the "test ... junk" mnemonic, 10000 ETH each): public keys, dev only.
/** @type import('hardhat/config').HardhatUserConfig */
module.exports = {
  networks: {
    hardhat: {
      chainId: 31337,
      hardfork: "prague",
      mining: { auto: true, interval: 0 },
    },
  },
};
