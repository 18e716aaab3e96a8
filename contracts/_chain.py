"""One chain connection: web3 on the embedded eth-tester or on any JSON-RPC URL.

Owns sending transactions (explicit gas, receipt status checked, reverts decoded by name), local
signing for keys that are not unlocked on the node, deploying artifacts, and the development
controls tests need (time travel, mining, snapshots) behind one interface for every backend.

Gas is explicit because web3's automatic estimate re-executes a transaction many times on py-evm
(measured 5-7x slower, see shared/notes/chain.md §5). On eth-tester a reverting transaction is
caught by an ``eth_call`` preflight; on JSON-RPC nodes by ``eth_estimateGas``, which also sizes the
gas limit. Synchronous by design: async callers run it in a worker thread (web3's async providers
are asyncio-only).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.exceptions import TimeExhausted
from web3.types import RPCEndpoint, TxReceipt

from ._artifacts import load_artifact
from ._errors import ChainError, ChainUnreachable, TransactionFailed
from ._keccak import to_checksum_address
from ._revert import as_contract_revert

EMBEDDED = "eth-tester"
# The embedded chain has no fee market to speak of and the block limit is 30M: a fixed limit costs
# nothing there and saves the estimate. Receipts report the real gasUsed either way.
EMBEDDED_GAS_LIMIT = 15_000_000
# Margin over eth_estimateGas on real nodes (the estimate is exact for the state it ran on; state
# can move between estimate and inclusion).
GAS_MARGIN = 1.25
RECEIPT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class ViewCall:
    """One prepared read of a contract view: its name, the contract, the calldata, and how to
    decode the returned bytes (``_clients`` prepares these)."""

    name: str
    address: str
    data: bytes
    decode: Callable[[bytes], Any]


@dataclass
class Chain:
    """A web3 connection plus the accounts that can sign on it."""

    w3: Web3
    kind: str  # EMBEDDED or "rpc"
    url: str
    signers: dict[str, LocalAccount] = field(default_factory=dict)
    # (artifact, checksummed address) -> web3 contract: web3 builds one from the ABI (selectors,
    # validation) in ~10-30 ms of CPU, and oracles poll the escrow every half second (bench_oracle
    # profile: 18 % of the oracles' process was building contract objects, much of it on the trio thread)
    _contracts: dict[tuple[str, str], Any] = field(default_factory=dict, repr=False, compare=False)

    # ------------------------------------------------------------------ construction

    @classmethod
    def embedded(cls) -> Chain:
        """A fresh in-process eth-tester (py-evm) chain with 10 funded unlocked accounts."""
        from eth_tester import EthereumTester, PyEVMBackend
        from web3 import EthereumTesterProvider

        # the backend named: eth-tester's default lookup resets the process's warning filters to
        # "default" (every ResourceWarning and DeprecationWarning then printed at exit)
        return cls(w3=Web3(EthereumTesterProvider(EthereumTester(PyEVMBackend()))), kind=EMBEDDED, url=EMBEDDED)

    @classmethod
    def connect(cls, url: str, *, timeout_s: float = 10.0) -> Chain:
        """Connect to a JSON-RPC URL (http(s)://...); raise ``ChainUnreachable`` if it does not answer."""
        if url == EMBEDDED:
            return cls.embedded()
        if not url.startswith(("http://", "https://")):
            raise ChainUnreachable(url, "only http(s) JSON-RPC URLs are supported")
        # the chain id is asked before every call and transaction (web3's validation); a URL's chain
        # does not change under a running client, so it is asked once
        w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": timeout_s}, cache_allowed_requests=True,
                                    cacheable_requests={RPCEndpoint("eth_chainId")}))
        try:
            w3.eth.chain_id  # noqa: B018 - the probe
        except Exception as exc:  # requests' ConnectionError, timeouts, bad JSON: all "no answer"
            raise ChainUnreachable(url, f"{type(exc).__name__}: {exc}") from exc
        return cls(w3=w3, kind="rpc", url=url)

    # ------------------------------------------------------------------ facts

    @property
    def chain_id(self) -> int:
        return int(self.w3.eth.chain_id)

    @property
    def accounts(self) -> list[str]:
        """Accounts the node itself holds unlocked (dev chains), checksummed."""
        return [to_checksum_address(a) for a in self.w3.eth.accounts]

    def add_signer(self, account: LocalAccount) -> str:
        """Let this chain send transactions from a local key; returns its address."""
        self.signers[account.address] = account
        return account.address

    def block_number(self) -> int:
        return int(self.w3.eth.block_number)

    def now(self) -> int:
        """Timestamp of the latest block."""
        return int(self.w3.eth.get_block("latest")["timestamp"])

    # ------------------------------------------------------------------ contracts

    def contract(self, name: str, address: str) -> Any:
        """A web3 contract object for artifact ``name`` at ``address`` (built once per chain)."""
        key = (name, to_checksum_address(address))
        found = self._contracts.get(key)
        if found is None:
            found = self._contracts[key] = self.w3.eth.contract(address=key[1], abi=load_artifact(name).abi)
        return found

    def deploy(self, name: str, *args: Any, sender: str) -> tuple[Any, TxReceipt]:
        """Deploy artifact ``name`` with constructor ``args``; return the contract and receipt."""
        art = load_artifact(name)
        factory = self.w3.eth.contract(abi=art.abi, bytecode=art.bytecode)
        receipt = self.transact(factory.constructor(*args), sender)
        address = receipt["contractAddress"]
        if address is None:
            raise ChainError(f"deploying {name} produced no contract address")
        return self.contract(name, address), receipt

    def read_many(self, calls: Sequence[ViewCall], block: int | None = None) -> list[Any]:
        """Several views at the latest block, decoded, in order: on a URL one JSON-RPC batch of raw
        ``eth_call``s, past web3's per-call pipeline (one at a time if the endpoint refuses
        batches). Measured against anvil: a view through web3 costs ~5 ms of CPU, a raw
        ``eth_call`` ~1 ms, one in a batch of 8 ~0.15 ms; nodes read the escrow for every job they
        accept or would run. The embedded chain reads one at a time. ``ChainUnreachable`` if the
        URL does not answer, ``ChainError`` if a call fails. ``block``: at that block instead (a
        node that has pruned its state answers with an error, raised as ``ChainError``)."""
        if not calls:
            return []
        if self.kind == EMBEDDED:
            return [_decoded(call, self._embedded_call(call, block)) for call in calls]
        at = "latest" if block is None else hex(block)
        requests = [(RPCEndpoint("eth_call"), [{"to": call.address, "data": "0x" + call.data.hex()}, at])
                    for call in calls]
        provider: Any = self.w3.provider
        try:
            answers = provider.make_batch_request(requests) if len(calls) > 1 else None
            if not isinstance(answers, list) or len(answers) != len(calls):
                # one call, or an endpoint that refuses batches (it answers with one error object)
                answers = [provider.make_request(method, params) for method, params in requests]
        except Exception as exc:
            translated = self._translate(exc)
            raise (translated if isinstance(translated, ChainError)
                   else ChainError(f"{len(calls)} calls to {self.url}: {type(exc).__name__}: {exc}")) from exc
        out = []
        for call, answer in zip(calls, answers, strict=True):
            result = answer.get("result")
            if "error" in answer or not isinstance(result, str):
                error = str(answer.get("error", answer))[:200]
                raise ChainError(f"eth_call {call.name} to {call.address} failed: {error}")
            out.append(_decoded(call, bytes.fromhex(result.removeprefix("0x"))))
        return out

    def _embedded_call(self, call: ViewCall, block: int | None = None) -> bytes:
        try:
            return bytes(self.w3.eth.call({"to": call.address, "data": call.data},  # type: ignore[typeddict-item]
                                          "latest" if block is None else block))
        except Exception as exc:
            translated = self._translate(exc)
            if isinstance(translated, ChainUnreachable):
                raise translated from exc
            raise ChainError(f"eth_call {call.name} to {call.address} failed: {type(exc).__name__}: {exc}") from exc

    # ------------------------------------------------------------------ transactions

    def call(self, fn: Any, sender: str | None = None) -> Any:
        """Call a view (or simulate a transaction); reverts raise their named ``ContractRevert``."""
        try:
            return fn.call({"from": sender} if sender else {})
        except Exception as exc:
            translated = self._translate(exc)
            if translated is exc:
                raise
            raise translated from exc

    def transact(self, fn: Any, sender: str, *, value: int = 0, gas: int | None = None) -> TxReceipt:
        """Send ``fn`` from ``sender`` and wait for it; raise the named revert if it would fail."""
        params: dict[str, Any] = {"from": to_checksum_address(sender), "value": value}
        try:
            if gas is None:
                if self.kind == EMBEDDED and hasattr(fn, "call"):
                    fn.call(params)  # preflight: a revert surfaces here, decoded
                    gas = EMBEDDED_GAS_LIMIT
                else:
                    # against the pending block: the transaction goes into the next one, whose time may be
                    # well after the latest block's on a quiet chain that mines on demand (an epoch that
                    # has ended by the clock has not ended by the latest block)
                    pending = {} if self.kind == EMBEDDED else {"block_identifier": "pending"}  # (eth-tester has none)
                    gas = int(fn.estimate_gas(params, **pending) * GAS_MARGIN)
            params["gas"] = gas
            signer = self.signers.get(params["from"])
            if signer is None:
                tx_hash = fn.transact(params)
            else:
                params["nonce"] = self.w3.eth.get_transaction_count(signer.address, "pending")
                params["chainId"] = self.chain_id
                signed = signer.sign_transaction(fn.build_transaction(params))
                tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
            receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=RECEIPT_TIMEOUT_S)
        except (ChainError, TimeExhausted):
            raise
        except Exception as exc:
            translated = self._translate(exc)
            if translated is exc:
                raise
            raise translated from exc
        if receipt["status"] != 1:
            raise self._failure(fn, params, receipt)
        return receipt

    def _failure(self, fn: Any, params: dict[str, Any], receipt: TxReceipt) -> ChainError:
        """Why a mined transaction failed: replayed as a call on the state it ran on, if possible."""
        failed = TransactionFailed(receipt["transactionHash"].hex(), int(receipt["gasUsed"]))
        if not hasattr(fn, "call"):
            return failed
        try:
            fn.call({k: v for k, v in params.items() if k in ("from", "value", "gas")},
                    block_identifier=receipt["blockNumber"] - 1)
        except Exception as exc:
            revert = as_contract_revert(exc)
            if revert is not None:
                return revert
        return failed

    def send_value(self, sender: str, to: str, wei: int) -> TxReceipt:
        """Send plain ether (to fund a local signer on a dev chain)."""
        tx = {"from": to_checksum_address(sender), "to": to_checksum_address(to), "value": wei, "gas": 21_000}
        tx_hash = self.w3.eth.send_transaction(tx)  # type: ignore[arg-type]
        return self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=RECEIPT_TIMEOUT_S)

    def _translate(self, exc: Exception) -> Exception:
        revert = as_contract_revert(exc)
        if revert is not None:
            return revert
        if isinstance(exc, ConnectionError) or type(exc).__name__ in {"ConnectionError", "ReadTimeout"}:
            return ChainUnreachable(self.url, str(exc))
        return exc

    # ------------------------------------------------------------------ development controls

    def advance_time(self, seconds: int) -> int:
        """Mine a block ``seconds`` after the latest one; returns its timestamp (dev chains only)."""
        target = self.now() + seconds
        self.set_next_timestamp(target)
        self.mine()
        return target

    def set_next_timestamp(self, timestamp: int) -> None:
        """The next mined block gets ``timestamp``."""
        if self.kind == EMBEDDED:
            self.w3.provider.ethereum_tester.time_travel(timestamp)  # type: ignore[attr-defined]
        else:
            self.w3.provider.make_request("evm_setNextBlockTimestamp", [timestamp])  # type: ignore[arg-type]

    def mine(self, blocks: int = 1) -> None:
        if self.kind == EMBEDDED:
            self.w3.provider.ethereum_tester.mine_blocks(blocks)  # type: ignore[attr-defined]
        else:
            # web3's testing.mine sends evm_mine [n], which anvil reads as a timestamp
            self.w3.provider.make_request("anvil_mine", [blocks])  # type: ignore[arg-type]

    def snapshot(self) -> Any:
        if self.kind == EMBEDDED:
            return self.w3.provider.ethereum_tester.take_snapshot()  # type: ignore[attr-defined]
        return self.w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[arg-type]

    def revert_to(self, snapshot: Any) -> None:
        if self.kind == EMBEDDED:
            self.w3.provider.ethereum_tester.revert_to_snapshot(snapshot)  # type: ignore[attr-defined]
        else:
            self.w3.provider.make_request("evm_revert", [snapshot])  # type: ignore[arg-type]


def _decoded(call: ViewCall, raw: bytes) -> Any:
    try:
        return call.decode(raw)
    except Exception as exc:  # eth_abi's decoding errors: no contract there, or another one
        raise ChainError(f"{call.name} at {call.address} answered {len(raw)} bytes that do not decode: {exc}") from exc
