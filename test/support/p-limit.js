// slonik requires p-limit 6, which is ESM only and which jest's CommonJS runtime cannot load on
// Node 20. slonik uses it only to bound async row transforms, which Keel's pool does not use.
module.exports = { __esModule: true, default: () => (run) => run() };
