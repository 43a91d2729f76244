import { readdirSync } from 'node:fs';
import path from 'node:path';

/** Ready-made agent files (docs/templates.md); `KEEL_TEMPLATE=<name>` runs `<name>.yaml` from here. */
export const TEMPLATES_DIR = path.join(__dirname, 'templates');

/** The templates there are, by name, sorted. */
export function availableTemplates(dir: string = TEMPLATES_DIR): string[] {
  return readdirSync(dir)
    .filter((file) => file.endsWith('.yaml'))
    .map((file) => file.slice(0, -'.yaml'.length))
    .sort();
}

/** The agents file of a template; a name that is not one of them (a path included) is refused with the list. */
export function templateFile(name: string, dir: string = TEMPLATES_DIR): string {
  const names = availableTemplates(dir);
  if (!names.includes(name)) throw new Error(`unknown template "${name}" (available templates: ${names.join(', ') || 'none'})`);
  return path.join(dir, `${name}.yaml`);
}
