import pino from 'pino';
import type { Settings } from './settings';

export function createLogger(settings: Settings, name: string) {
  return pino({
    name,
    level: settings.logLevel,
    redact: { paths: ['*.apiKey', '*.authorization', '*.content', 'content'], censor: '[redacted]' },
  });
}
export type Logger = ReturnType<typeof createLogger>;
