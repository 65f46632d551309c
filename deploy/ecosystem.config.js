// pm2 ecosystem for an sn1 node: `pm2 start deploy/ecosystem.config.js` from the repository root.
// Each process reads its own env file, .env.<role> (copy .env.*.example first), or pm2 env alone. Start only what this host runs:
//   pm2 start deploy/ecosystem.config.js --only sn1-api
// The API forks WORKERS processes itself (SO_REUSEPORT): keep pm2 at one instance, fork mode.
// pm2 restarts a process that exits, and stops one with SIGINT (its daemon's PM2_KILL_SIGNAL; there is no per-app
// setting), which the node takes as SIGTERM: a graceful stop. kill_timeout (40 s) lets it finish in-flight requests
// and outlast its own 30 s shutdown limit (an ERROR naming what is stuck) before pm2 sends SIGKILL.
// No `time: true`: every line the node logs starts with its own timestamp already.
const path = require("path");
const root = path.resolve(__dirname, "..");

function app(name, script, args) {
  return {
    name,
    cwd: root,
    script,
    args,
    interpreter: "none",
    exec_mode: "fork",
    instances: 1,
    autorestart: true,
    max_restarts: 50,
    min_uptime: "10s",
    restart_delay: 2000,
    exp_backoff_restart_delay: 200,
    kill_timeout: 40000,
    merge_logs: true,
  };
}

module.exports = {
  apps: [
    app("sn1-api", "./run_api.sh", ""),
    app("sn1-validator", ".venv/bin/sn1", "validator"),
    app("sn1-miner", ".venv/bin/sn1", "miner"),
  ],
};
