/** Stops what global-setup.ts started (nothing when the run reused external servers). */
export default async function globalTeardown(): Promise<void> {
  const services = globalThis.keelTestServices;
  globalThis.keelTestServices = undefined;
  const results = await Promise.allSettled((services?.stops ?? []).map((s) => s.stop()));
  const failures = results.flatMap((r, i) => (r.status === 'rejected' ? [`${services?.stops[i]?.name}: ${String(r.reason)}`] : []));
  if (failures.length > 0) throw new Error(`test services failed to stop:\n${failures.join('\n')}`);
}
