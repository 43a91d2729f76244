/** Runs async jobs one after another, in submission order. */
export class SerialQueue {
  private tail: Promise<void> = Promise.resolve();

  constructor(private readonly onError: (error: unknown) => void) {}

  push(job: () => Promise<void> | void): void {
    this.tail = this.tail.then(job).catch(this.onError);
  }

  idle(): Promise<void> {
    return this.tail;
  }
}
