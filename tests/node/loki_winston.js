// Logs through winston -> winston-loki (protobuf + snappy) to a Loki push URL, then flushes.
// Usage: node loki_winston.js <base url> <service_name> <count> [bearer token] [X-Scope-OrgID]
// Prints {"sent": n, "contentType": "..."} once every batch was answered 204.
'use strict'
const winston = require('winston')
const LokiTransport = require('winston-loki')

async function main () {
  const [host, service, count, token, org] = process.argv.slice(2)
  const headers = {}
  if (token) headers.Authorization = `Bearer ${token}`
  if (org) headers['X-Scope-OrgID'] = org
  const failures = []
  const transport = new LokiTransport({
    host,
    labels: { service_name: service, host: 'node-1' },
    headers,
    interval: 0.2,
    gracefulShutdown: false,
    onConnectionError: (err) => failures.push(String(err))
  })
  const logger = winston.createLogger({ transports: [transport] })
  const n = Number(count)
  for (let i = 0; i < n; i++) {
    logger.warn(`cart ${i} abandoned`, { cart: String(i), region: 'eu' })
  }
  await transport.flush()
  await transport.close()
  if (failures.length) {
    console.error(JSON.stringify({ failures: failures.slice(0, 3) }))
    process.exit(1)
  }
  console.log(JSON.stringify({ sent: n, contentType: transport.batcher.contentType }))
}

main().catch((err) => { console.error(err); process.exit(1) })
