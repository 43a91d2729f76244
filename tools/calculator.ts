import { z } from 'zod';
import { parseArgs, ToolInputError, type Tool } from './tool';

const MAX_EXPRESSION_CHARS = 500;
const MAX_NESTING = 64;

const Args = z.object({ expression: z.string().trim().min(1).max(MAX_EXPRESSION_CHARS) }).strict();
type Args = z.infer<typeof Args>;

interface Token {
  /** A number literal, or one of `+ - * / % ^ ( )`. */
  text: string;
  value?: number;
  pos: number;
}

const TOKEN = /(\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)|\*\*|[-+*/%^()]/y;

function tokenize(source: string): Token[] {
  const tokens: Token[] = [];
  let pos = 0;
  while (pos < source.length) {
    if (/\s/.test(source.charAt(pos))) {
      pos++;
      continue;
    }
    TOKEN.lastIndex = pos;
    const match = TOKEN.exec(source);
    if (!match) throw new ToolInputError(`unexpected character '${source.charAt(pos)}' at position ${pos + 1}`);
    const [text, number] = match;
    // `**` is how many models write a power; it means the same as `^`.
    tokens.push(number === undefined ? { text: text === '**' ? '^' : text, pos } : { text, value: Number(number), pos });
    pos = TOKEN.lastIndex;
  }
  return tokens;
}

/**
 * Recursive descent over:
 *   expression := term (('+' | '-') term)*
 *   term       := unary (('*' | '/' | '%') unary)*
 *   unary      := ('-' | '+') unary | power
 *   power      := primary ('^' unary)?        right-associative, so -2^2 = -4 and 2^-1 = 0.5
 *   primary    := number | '(' expression ')'
 */
class Parser {
  private index = 0;
  private depth = 0;

  constructor(private readonly tokens: Token[]) {}

  parse(): number {
    const value = this.expression();
    const extra = this.tokens[this.index];
    if (extra) throw new ToolInputError(`unexpected '${extra.text}' at position ${extra.pos + 1}`);
    return value;
  }

  private expression(): number {
    let value = this.term();
    for (let op = this.take('+', '-'); op; op = this.take('+', '-')) {
      const right = this.term();
      value = op === '+' ? value + right : value - right;
    }
    return value;
  }

  private term(): number {
    let value = this.unary();
    for (let op = this.take('*', '/', '%'); op; op = this.take('*', '/', '%')) {
      const right = this.unary();
      if (op !== '*' && right === 0) throw new ToolInputError('division by zero');
      value = op === '*' ? value * right : op === '/' ? value / right : value % right;
    }
    return value;
  }

  private unary(): number {
    const sign = this.take('-', '+');
    if (!sign) return this.power();
    const operand = this.nested(() => this.unary());
    return sign === '-' ? -operand : operand;
  }

  private power(): number {
    const base = this.primary();
    return this.take('^') ? base ** this.nested(() => this.unary()) : base;
  }

  private primary(): number {
    const token = this.tokens[this.index];
    if (!token) throw new ToolInputError('unexpected end of expression');
    this.index++;
    if (token.value !== undefined) return token.value;
    if (token.text !== '(') throw new ToolInputError(`unexpected '${token.text}' at position ${token.pos + 1}`);
    const value = this.nested(() => this.expression());
    if (!this.take(')')) throw new ToolInputError(`missing ')' for the '(' at position ${token.pos + 1}`);
    return value;
  }

  private take(...ops: string[]): string | undefined {
    const token = this.tokens[this.index];
    if (!token || token.value !== undefined || !ops.includes(token.text)) return undefined;
    this.index++;
    return token.text;
  }

  private nested(inner: () => number): number {
    if (++this.depth > MAX_NESTING) throw new ToolInputError(`expression is nested more than ${MAX_NESTING} levels deep`);
    try {
      return inner();
    } finally {
      this.depth--;
    }
  }
}

/** Evaluates an arithmetic expression without eval. Throws ToolInputError on bad syntax or a non-finite result. */
export function evaluate(expression: string): number {
  const value = new Parser(tokenize(expression)).parse();
  if (!Number.isFinite(value)) throw new ToolInputError('the result is not a finite number');
  // 15 significant digits hide binary floating-point noise (0.1 + 0.2 gives 0.3, not 0.30000000000000004).
  return Number(value.toPrecision(15)) + 0;
}

export const calculator: Tool<Args> = {
  definition: {
    name: 'calculator',
    description: 'Evaluates an arithmetic expression: numbers, + - * / % ^ (power), parentheses and unary minus.',
    parameters: {
      type: 'object',
      properties: {
        expression: { type: 'string', description: 'The expression, e.g. "(15 + 27) * 2 ^ 3".', minLength: 1, maxLength: MAX_EXPRESSION_CHARS },
      },
      required: ['expression'],
      additionalProperties: false,
    },
    permission: 'read',
    requiresApproval: false,
    timeoutMs: 2_000,
    retry: { maxAttempts: 1 },
  },
  parse: (args) => parseArgs(Args, args),
  execute: async ({ expression }) => ({ result: evaluate(expression) }),
};
