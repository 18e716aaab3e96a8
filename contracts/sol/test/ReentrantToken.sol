// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title ReentrantToken
/// @notice TEST ONLY. An ERC-20 that, when armed, calls back into a target during every transfer
/// out of the target (the escrow paying someone), to prove the escrow's reentrancy guards hold.
contract ReentrantToken is ERC20 {
    address private _target;
    bytes private _payload;


    constructor() ERC20("reentrant", "RE") {}

    /// @notice Mint freely (test token).
    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    /// @notice Call `target` with `payload` on every transfer out of `target`; empty payload disarms.
    function arm(address target, bytes calldata payload) external {
        _target = target;
        _payload = payload;
    }

    function _update(address from, address to, uint256 value) internal override {
        super._update(from, to, value);
        if (from == _target && _payload.length != 0) {
            (bool ok, bytes memory reason) = _target.call(_payload);
            if (!ok) {
                assembly ("memory-safe") {
                    revert(add(reason, 0x20), mload(reason))
                }
            }
        }
    }
}
