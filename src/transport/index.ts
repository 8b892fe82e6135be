export * from './connection.js';
export * from './socket.js';
