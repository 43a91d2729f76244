import http from 'node:http';
import net from 'node:net';
import { Runtime } from '@temporalio/worker';
import type { Metrics } from '../config/metrics';

export async function freeLocalPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

/**
 * Installs the Temporal runtime with its Prometheus exporter on a private port; must run
 * before the first connection. Returns that port, so /metrics can include the SDK's own metrics.
 */
export async function installTemporalRuntime(): Promise<number> {
  const port = await freeLocalPort();
  Runtime.install({ telemetryOptions: { metrics: { prometheus: { bindAddress: `127.0.0.1:${port}` }, metricPrefix: 'temporal_' } } });
  return port;
}

/** GET /metrics: the worker's own metrics followed by the Temporal SDK's. */
export async function startWorkerMetricsServer(metrics: Metrics, port: number, temporalPort: number): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    if (req.url !== '/metrics') {
      res.writeHead(404).end();
      return;
    }
    void (async () => {
      const own = await metrics.registry.metrics();
      const sdk = await fetch(`http://127.0.0.1:${temporalPort}/metrics`).then((r) => r.text(), () => '');
      res.writeHead(200, { 'content-type': metrics.registry.contentType }).end(`${own}\n${sdk}`);
    })().catch(() => res.writeHead(500).end());
  });
  await new Promise<void>((resolve) => server.listen(port, '0.0.0.0', resolve));
  return server;
}
